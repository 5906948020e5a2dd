"""Read replicas: read-only calls on replica engines, everything else on the primary.

A store opened with ``replicas=[…]`` (``ASYNCSTORE_REPLICA_URIS``) keeps one engine, with
its own pool, per replica. :class:`ReadRouter` hands the unit of work a replica
connection for each read-only transaction (``write=False``), taking the replicas in turn,
and None, meaning the primary, when:

* the caller is inside :func:`primary_scope` (``store.primary()``): read-your-writes;
* no replica is fit: each is checked at most every ``replica_check_interval`` seconds,
  and one further behind the primary than ``replica_max_lag`` seconds, or whose lag
  cannot be told (replication stopped), is skipped until its next check;
* a replica does not answer: connecting failed or took more than
  :data:`REPLICA_CONNECT_TIMEOUT` seconds, or a read on it failed transiently (the
  unit of work then runs the read again, and it goes elsewhere). The replica is left
  alone for ``replica_check_interval`` seconds, then tried again.

Writes, and the reads inside a write transaction, always go to the primary. Each change
of a replica's state is logged once (WARNING when it stops serving, INFO when it serves
again); :meth:`ReadRouter.status` reports every replica's state, lag and reads served.

Lag, as each server reports it:

* PostgreSQL: 0 when the replica has replayed everything it received, else the age of
  the last transaction it replayed (``now() - pg_last_xact_replay_timestamp()``);
  unknown when its WAL receiver is not streaming. A server that is not in recovery (a
  primary) lags 0.
* MySQL/MariaDB: ``Seconds_Behind_Master`` (MySQL 8: ``Seconds_Behind_Source``) of ``SHOW
  REPLICA STATUS``; unknown when it is NULL (replication stopped). A server that replicates from nowhere lags 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import logging
import time
from collections.abc import Iterator, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from asyncstore.config import Backend, StoreConfig, redact
from asyncstore.translate import translate

log = logging.getLogger(__name__)

REPLICA_CONNECT_TIMEOUT = 2.0
"""Seconds a read waits for a replica connection (a pooled one, or a new one) before it
goes elsewhere: a replica behind a network partition would otherwise hold each read
for the driver's own connect timeout (60 s for asyncpg)."""

_PRIMARY_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("asyncstore_primary_only", default=False)


@contextlib.contextmanager
def primary_scope() -> Iterator[None]:
    """Inside the block (and in tasks started from it), reads go to the primary."""
    token = _PRIMARY_ONLY.set(True)
    try:
        yield
    finally:
        _PRIMARY_ONLY.reset(token)


class ReplicaState(str, enum.Enum):
    """What the router last found out about a replica."""

    UNCHECKED = "unchecked"
    """Not used yet."""
    SERVING = "serving"
    """Answering, and within ``replica_max_lag`` of the primary at its last check."""
    LAGGING = "lagging"
    """Further behind than ``replica_max_lag``, or not replicating: skipped until its next check."""
    DOWN = "down"
    """Did not answer: skipped until its next check."""


@dataclasses.dataclass(frozen=True)
class ReplicaStatus:
    """One replica as :meth:`asyncstore.AsyncStore.replica_status` reports it."""

    uri: str
    """The replica's URI, password hidden."""
    state: ReplicaState
    lag_seconds: float | None
    """At the last check; None before the first, or when it could not be told."""
    reads: int
    """Read transactions it has served."""
    problem: str | None
    """Why it is DOWN or LAGGING."""


@dataclasses.dataclass(eq=False)
class _Replica:
    engine: AsyncEngine
    safe_uri: str
    state: ReplicaState = ReplicaState.UNCHECKED
    lag: float | None = None
    reads: int = 0
    problem: str | None = None
    next_check: float = 0.0
    """Monotonic time of the next lag check (or of the next try, when DOWN or LAGGING)."""


_PG_LAG = text(
    "SELECT pg_is_in_recovery(), COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), "
    "pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(), "
    "EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
)


async def replica_lag(conn: AsyncConnection, backend: Backend) -> float | None:
    """How many seconds the server behind ``conn`` is behind its primary (see the module
    docstring); None when it cannot be told."""
    if backend is Backend.POSTGRESQL:
        recovering, streaming, replayed_all, age = (await conn.execute(_PG_LAG)).one()
        if not recovering:
            return 0.0
        if not streaming:
            return None
        if replayed_all:
            return 0.0
        return None if age is None else max(0.0, float(age))
    rows = (await conn.exec_driver_sql("SHOW REPLICA STATUS")).mappings().all()
    if not rows:
        return 0.0
    # MariaDB names the column after the master, MySQL 8 after the source.
    behind = [row.get("Seconds_Behind_Master", row.get("Seconds_Behind_Source")) for row in rows]
    return None if any(b is None for b in behind) else float(max(behind))


class ReadRouter:
    """Picks the engine of each read-only transaction (see the module docstring).

    Args:
        engines: one engine per replica (:meth:`StoreConfig.replica`).
        config: the primary's configuration (lag bound and check interval).
    """

    def __init__(self, engines: Sequence[AsyncEngine], config: StoreConfig) -> None:
        self._replicas = [_Replica(engine, redact(engine.url)) for engine in engines]
        self._backend = config.backend
        self._max_lag = config.replica_max_lag
        self._interval = config.replica_check_interval
        self._next = 0

    @property
    def engines(self) -> list[AsyncEngine]:
        """The replicas' engines."""
        return [r.engine for r in self._replicas]

    def status(self) -> list[ReplicaStatus]:
        """Every replica's state, lag at its last check and reads served."""
        return [ReplicaStatus(r.safe_uri, r.state, r.lag, r.reads, r.problem) for r in self._replicas]

    async def connect(self) -> AsyncConnection | None:
        """A connection to a replica fit to serve a read, or None: read from the primary."""
        if _PRIMARY_ONLY.get() or not self._replicas:
            return None
        count = len(self._replicas)
        for k in range(count):
            index = (self._next + k) % count
            replica = self._replicas[index]
            now = time.monotonic()
            if replica.state in (ReplicaState.DOWN, ReplicaState.LAGGING) and now < replica.next_check:
                continue
            conn = await self._connect(replica, now)
            if conn is not None:
                self._next = (index + 1) % count
                replica.reads += 1
                return conn
        return None

    def failed(self, engine: AsyncEngine, exc: Exception) -> None:
        """A read on ``engine``'s replica failed transiently: leave the replica alone for a while."""
        for replica in self._replicas:
            if replica.engine is engine:
                self._set(replica, ReplicaState.DOWN, None, f"a read failed: {translate(exc).message}")

    async def _connect(self, replica: _Replica, now: float) -> AsyncConnection | None:
        try:
            conn = await asyncio.wait_for(replica.engine.connect(), REPLICA_CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            self._set(replica, ReplicaState.DOWN, None, f"it did not answer within {REPLICA_CONNECT_TIMEOUT:g}s")
            return None
        except Exception as exc:
            self._set(replica, ReplicaState.DOWN, None, f"connecting failed: {translate(exc).message}")
            return None
        if now < replica.next_check:
            return conn
        try:
            lag = await replica_lag(conn, self._backend)
            await conn.rollback()  # the check's own transaction; the caller begins its own
        except BaseException as exc:
            await conn.invalidate()
            await conn.close()
            if not isinstance(exc, Exception):
                raise
            self._set(replica, ReplicaState.DOWN, None, f"checking its lag failed: {translate(exc).message}")
            return None
        if lag is None or lag > self._max_lag:
            await conn.close()
            problem = "not replicating" if lag is None else f"{lag:.1f}s behind (replica_max_lag {self._max_lag:g}s)"
            self._set(replica, ReplicaState.LAGGING, lag, problem)
            return None
        self._set(replica, ReplicaState.SERVING, lag, None)
        return conn

    def _set(self, replica: _Replica, state: ReplicaState, lag: float | None, problem: str | None) -> None:
        replica.lag = lag
        replica.next_check = time.monotonic() + self._interval
        if state is replica.state:
            replica.problem = problem
            return
        previous, replica.state, replica.problem = replica.state, state, problem
        if state is ReplicaState.SERVING:
            if previous is not ReplicaState.UNCHECKED:
                log.info("replica %s serves reads again", replica.safe_uri)
        else:
            log.warning(
                "replica %s is %s (%s); its reads go to the other replicas or the primary for now",
                replica.safe_uri, state.value, problem,
            )


__all__ = ["REPLICA_CONNECT_TIMEOUT", "ReadRouter", "ReplicaState", "ReplicaStatus", "primary_scope", "replica_lag"]
