"""The job worker: runs handlers for the jobs of ``store.jobs`` (``asyncstore worker`` on the command line).

``runtime`` is the :class:`Worker` (claims in batches, runs handlers, heartbeats,
batched finishes, retries, timeouts, graceful shutdown), ``wakeup`` the PostgreSQL
LISTEN connection that wakes an idle worker, ``command`` the CLI.
"""

from asyncstore.worker.runtime import Handler, JobContext, Worker

__all__ = ["Handler", "JobContext", "Worker"]
