"""`asyncstore bench`: workloads, peers, raw-driver ceilings and reports."""
