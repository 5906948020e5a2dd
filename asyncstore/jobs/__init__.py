"""The job queue: a database-backed queue with atomic claims and leases.

``queue`` is the repository; ``sql`` holds the hand-written per-backend statements
(claims, the database clock), ``rules`` the checks and retry policy, ``listing`` the
keyset-paged iterator.
"""

from asyncstore.jobs.queue import JobRepository

__all__ = ["JobRepository"]
