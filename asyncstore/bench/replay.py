"""Raw-driver ceilings that replay what the store sends: reads and job claims.

Reads (``get_run``, ``search_runs``, ``search_traces``, ``search_scale/...``): the
statements and parameters the store sends for each distinct call (per run id, per
filter) are recorded once with a ``before_cursor_execute`` listener, already in the
driver's paramstyle (``$1`` asyncpg, ``%s`` aiomysql, ``?`` sqlite3); the timed
part replays them through bare driver connections (:class:`~asyncstore.bench.raw.RawDriver`;
as many as the store's pool may open, at the workload's concurrency), in one
transaction per call, fetching every row.

Jobs (``claim_jobs``): one claim and one finish are recorded the same way and
replayed per job with the repetition's job name and the claimed id put in.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncstore.bench.database import ScratchDatabase
from asyncstore.bench.measure import Outcome, fan_out, timed
from asyncstore.bench.raw import RAW_WRITES, RawDriver, Statement, _RawWrites
from asyncstore.bench.scale import Scale
from asyncstore.bench.workloads import ClaimJobs, Spec, _ReadWorkload
from asyncstore.entities import NewJob

_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def record_statements(engine: AsyncEngine) -> contextlib.AbstractContextManager[list[Statement]]:
    """A block during which every statement ``engine`` sends to its driver is recorded.

    Transaction control (``BEGIN``, ``COMMIT``, ...) is left out: the replay opens
    its own transaction per call.
    """

    @contextlib.contextmanager
    def recording() -> Iterator[list[Statement]]:
        seen: list[Statement] = []

        def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
            if not statement.lstrip().upper().startswith(_CONTROL):
                seen.append((statement, parameters))

        event.listen(engine.sync_engine, "before_cursor_execute", listener)
        try:
            yield seen
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", listener)

    return recording()


async def recorded(engine: AsyncEngine, call: Callable[[], Awaitable[Any]]) -> list[Statement]:
    """The statements one ``call()`` sends (recorded on its second run, warm: no connect-time queries)."""
    await call()
    with record_statements(engine) as seen:
        await call()
    if not seen:
        raise RuntimeError("the store sent no statement to record")
    return list(seen)


class RawReads:
    """The statements a read workload's store sends, replayed by bare driver connections.

    Each distinct call of the store workload (:meth:`_ReadWorkload.calls`) is
    recorded once; call ``i`` of repetition ``rep`` replays the recording of the same
    distinct call the store makes (:meth:`_ReadWorkload.which`), at the same
    concurrency, each on a connection of its own taken from a pool as large as the
    store's may grow.
    """

    def __init__(self, scratch: ScratchDatabase, scale: Scale, spec: Spec, peer: _ReadWorkload) -> None:
        self.scratch = scratch
        self.scale = scale
        self.spec = spec
        self.peer = peer
        self.recordings: list[list[Statement]] = []
        self.rows: list[int] = []
        self.idle: asyncio.Queue[RawDriver] = asyncio.Queue()
        self.drivers: list[RawDriver] = []

    async def setup(self) -> None:
        """Record every distinct call, connect, and check each replay fetches rows."""
        store = self.peer.store
        self.recordings = [await recorded(store.engine, call) for call in self.peer.calls()]
        config = store.config
        size = max(1, min(self.spec.concurrency, config.pool_size + max(config.max_overflow, 0)))
        for _ in range(size):
            driver = RawDriver(self.scratch.uri)
            await driver.open()
            self.drivers.append(driver)
            self.idle.put_nowait(driver)
        self.rows = [await self.drivers[0].fetch_all(statements) for statements in self.recordings]
        if not all(self.rows):
            raise RuntimeError(f"a replayed call fetched no row ({self.rows}); the recording is broken")

    async def prepare(self, rep: int) -> None:
        """Nothing: the recordings are made once."""

    async def run(self, rep: int) -> Outcome:
        """Replay the calls of repetition ``rep``; latencies for the workloads that report them."""
        latencies: list[float] = []
        count = self.spec.size(self.scale)

        async def call(statements: list[Statement]) -> None:
            driver = await self.idle.get()  # waiting for a connection counts, as in the store's pool
            try:
                await driver.fetch_all(statements)
            finally:
                self.idle.put_nowait(driver)

        async def replay(i: int) -> None:
            statements = self.recordings[self.peer.which(i, rep)]
            await timed(lambda: call(statements), latencies)

        await fan_out(count, self.spec.concurrency, replay)
        return Outcome(count, latencies=latencies if self.peer.latency else None)

    async def teardown(self) -> None:
        """Disconnect every driver."""
        for driver in self.drivers:
            await driver.close()
        self.drivers = []


class RawClaimJobs(ClaimJobs):
    """claim_jobs by the bare driver: the statements the store sends to claim and to finish a job.

    One claim and one finish are recorded in setup; each replay sends the same
    statements with this repetition's job name, and the finish with the id the claim
    returned, through bare driver connections (one pool, as many as workers).
    """

    def __init__(self, scratch: ScratchDatabase, scale: Scale, spec: Spec, peer: ClaimJobs) -> None:
        super().__init__(peer.store, scale, spec)
        self.scratch = scratch
        self.idle: asyncio.Queue[RawDriver] = asyncio.Queue()
        self.drivers: list[RawDriver] = []

    async def setup(self) -> None:
        """Record a claim and a finish (the second of each: warm), connect."""
        jobs = self.store.jobs
        self.recorded_name = f"bench.raw-record.{secrets.token_hex(6)}"
        await jobs.create_many([NewJob(self.recorded_name, {"n": i}) for i in range(2)])
        warm = (await jobs.claim([self.recorded_name], limit=1, lease_seconds=60))[0].job_id
        with record_statements(self.store.engine) as claim_sql:
            claimed = await jobs.claim([self.recorded_name], limit=1, lease_seconds=60)
        await jobs.finish(warm, "ok")
        with record_statements(self.store.engine) as finish_sql:
            await jobs.finish(claimed[0].job_id, "ok")
        self.recorded_id = claimed[0].job_id
        self.claim_sql, self.finish_sql = list(claim_sql), list(finish_sql)
        for _ in range(self.spec.concurrency):
            driver = RawDriver(self.scratch.uri)
            await driver.open()
            self.drivers.append(driver)
            self.idle.put_nowait(driver)

    async def _replay(self, statements: Sequence[Statement], values: Mapping[str, str], learn: str | None) -> str | None:
        driver = await self.idle.get()
        try:
            return await driver.replay(statements, values, learn)
        finally:
            self.idle.put_nowait(driver)

    async def claim(self) -> str | None:
        """The store's claim statements for this repetition's job name; the id claimed."""
        return await self._replay(self.claim_sql, {self.recorded_name: self.job_name}, self.recorded_id)

    async def finish(self, job_id: str) -> None:
        """The store's finish statements for ``job_id``."""
        await self._replay(self.finish_sql, {self.recorded_id: job_id}, None)

    async def teardown(self) -> None:
        """Disconnect every driver."""
        for driver in self.drivers:
            await driver.close()
        self.drivers = []


RAW_WORKLOADS: dict[str, type[_RawWrites | RawReads | RawClaimJobs]] = {
    **RAW_WRITES,
    "get_run": RawReads,
    "search_runs": RawReads,
    "search_traces": RawReads,
    "search_scale": RawReads,
    "claim_jobs": RawClaimJobs,
}
"""The ``raw`` ceiling of each workload family that has one."""
