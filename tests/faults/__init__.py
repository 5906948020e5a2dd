"""Fault-injection suite: connections killed, servers gone, pools exhausted, storms.

Every case states its promise in its docstring and checks it by counting rows
afterwards. The helpers here break things from the outside: an admin connection
that kills the store's sessions (:mod:`tests.faults.admin`), a TCP proxy that starts
late (:mod:`tests.faults.proxy`) and helper scripts run as child processes.
"""
