"""Two PostgreSQL job queues drained the same way as asyncstore's, for comparison.

The peers are procrastinate (3.x) and PgQueuer (1.x), installed by the ``bench``
extra. :func:`drain_with_peer` runs one of them against an empty scratch database
that the caller created (and drops): it installs the library's own schema there,
then measures two things inside the current event loop.

Throughput
    ``jobs`` no-op jobs are enqueued first with the library's bulk enqueue, one
    statement (not timed). Then one worker, the library's own, is started in this
    event loop with ``concurrency`` job slots, and the clock runs from just
    before the worker is started until the handler of the last job has run (the
    handler is an ``async def`` that counts its calls). The worker's start-up
    (PgQueuer checks its schema, procrastinate registers the worker row) is
    inside the timed span, as it is for a worker started by a deployment.
    ``jobs_per_second`` is ``jobs / seconds``. A handler that runs a second time
    for the same job (neither library promises exactly-once) fails the run.

Latency
    After the drain, with the same worker running and idle, 20 single jobs are
    enqueued one at a time: each one once the previous one's handler has run and
    100 ms have passed. A job's latency is from just before its enqueue call
    (``time.perf_counter``, enqueue included) to the start of its handler; the
    median is reported. Both libraries wake an idle worker with PostgreSQL
    ``LISTEN/NOTIFY`` by default (a trigger on their job table sends the
    ``NOTIFY``), and that default is what is measured: their polling fallbacks
    (procrastinate 5 s, PgQueuer 30 s) are left as they come.

Each call installs, runs and closes everything it uses (connections, pools,
the worker task): nothing is left pending when it returns, also on error. The
libraries' own loggers are held at WARNING during the call, so a bench run with
``-v`` measures the queue, not two INFO lines formatted per job.

Settings, per library
    procrastinate: ``App(connector=PsycopgConnector(...))``. procrastinate 3.x
    has no asyncpg connector (its connectors are psycopg 3, psycopg2, aiopg,
    SQLAlchemy and Django), so this is psycopg 3 with its
    ``psycopg_pool.AsyncConnectionPool``, sized ``min_size = max_size =
    concurrency + 1``: procrastinate's docs ("Mind the size of your PostgreSQL
    pool") ask for as many connections as the concurrency, plus one, when jobs
    are short (with psycopg_pool's default of 4 a concurrency of 8 would wait on
    the pool). The ``LISTEN`` connection is a separate one, outside the pool.
    The worker is ``app.run_worker_async(concurrency=concurrency, wait=True,
    install_signal_handlers=False)``: ``concurrency`` is procrastinate's
    documented setting for N jobs at once in one worker ("sub-workers").
    ``wait=True`` because a ``wait=False`` worker exits as soon as it finds
    the queue empty, and the latency phase needs it still running; it is
    stopped by cancelling its task, which procrastinate documents as a graceful
    stop (running jobs finish, the worker row is removed). Jobs are kept in
    the table when done (``delete_jobs`` default ``never``). Throughput jobs
    are enqueued with ``Task.batch_defer_async``, latency jobs with
    ``Task.defer_async``.

    PgQueuer: ``QueueManager(Queries(AsyncpgDriver(connection)))`` on one
    asyncpg connection, the set-up PgQueuer's docs give for a worker (its pool
    driver is meant for producers); jobs are enqueued (in bulk: one
    ``Queries.enqueue`` with lists) through a second asyncpg connection, as a
    producer would. The schema is installed with ``Queries.install()`` (what
    ``pgq install`` runs). ``concurrency`` maps to the entrypoint's
    ``concurrency_limit`` (``@qm.entrypoint(name, concurrency_limit=N)``),
    PgQueuer's documented way to cap how many jobs of one kind run at once (it
    is enforced in the dequeue SQL; with one worker it is exactly N slots), and
    the only one that can express N = 1: the per-process
    ``max_concurrent_tasks`` must be at least twice ``batch_size``, so 1 is not
    a valid value. ``run(batch_size=concurrency)``: the dequeue never fetches
    more rows than there are free slots, and the batch size also sizes
    PgQueuer's completion buffer (finished jobs are written back when that many
    have finished, or every ~0.1 s), so with the default of 10 and
    ``concurrency_limit=1`` a finished job would hold its slot until the 0.1 s
    flush (on a 2-core machine, 2,000 jobs: ``concurrency_limit=8`` drained
    about 1,000 jobs/s with ``batch_size=8`` and 77 with the default 10; the
    other setting, ``max_concurrent_tasks=8`` with ``batch_size=4``, about 800).
    Everything else is PgQueuer's default (``dequeue_timeout`` 30 s, durable
    tables, no ``pgq autovac``).

    Neither library's job handler touches the database here, so what is timed
    is each library's claim / start / record-completion machinery. The two
    differ in how they record completion: procrastinate writes each job's
    status before its slot is free again, PgQueuer buffers completions and
    writes them in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.metadata
import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from asyncstore.bench.measure import Outcome

if TYPE_CHECKING:
    # Both libraries ship types, but they come with the bench extra, which CI's
    # mypy runs without: there they are Any (and the ignores are unused here).
    import pgqueuer.models  # type: ignore[import-not-found, unused-ignore]

QUEUE_PEERS: tuple[str, ...] = ("procrastinate", "pgqueuer")
"""The job-queue libraries :func:`drain_with_peer` can run, by their package names."""

LATENCY_PROBES = 20
"""How many single jobs the latency phase sends, one at a time."""

LATENCY_GAP = 0.1
"""Seconds between one latency job's handler having run and the next one's enqueue."""

STALL_TIMEOUT = 60.0
"""Seconds without any handler running after which a drain is declared stuck.

Longer than both libraries' polling fallbacks (procrastinate 5 s, PgQueuer 30 s),
so a lost ``NOTIFY`` shows up as a slow figure, not as an error.
"""

_TASK_NAME = "asyncstore_bench_noop"
"""The procrastinate task name and the PgQueuer entrypoint of the no-op job."""

_NO_PROBE = -1


@dataclasses.dataclass(frozen=True)
class PeerRun:
    """What one :func:`drain_with_peer` call measured.

    Attributes:
        peer: ``"procrastinate"`` or ``"pgqueuer"``.
        version: the library's installed version.
        jobs: jobs drained (equal to the number enqueued).
        seconds: wall time from the worker's start until the last job's handler had run.
        jobs_per_second: ``jobs / seconds``.
        latency_p50_ms: median enqueue-to-handler-start time of single jobs sent to
            the idle worker, in milliseconds; None if not measured (this module
            always measures it).
    """

    peer: str
    version: str
    jobs: int
    seconds: float
    jobs_per_second: float
    latency_p50_ms: float | None


class _Tally:
    """What the no-op handler records: calls, the drain's end, probe start times."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.drained = 0
        self.finished_at: float | None = None
        self.done = asyncio.Event()
        self.probe_started: dict[int, float] = {}
        self.probe_event = asyncio.Event()

    def record(self, probe: int) -> None:
        """Called first thing in the handler: a drain job (``_NO_PROBE``) or probe ``probe``."""
        now = time.perf_counter()
        if probe == _NO_PROBE:
            self.drained += 1
            if self.drained == self.expected:
                self.finished_at = now
                self.done.set()
        else:
            self.probe_started.setdefault(probe, now)
            self.probe_event.set()

    async def wait_drained(self, task: asyncio.Task[None]) -> None:
        """Wait until all drain jobs have run; raise if the worker ends or stops progressing."""
        seen = -1
        while not self.done.is_set():
            if task.done():
                task.result()  # re-raises the worker's error
                raise RuntimeError(f"the worker stopped after {self.drained} of {self.expected} jobs")
            if self.drained == seen:
                raise RuntimeError(
                    f"no job ran for {STALL_TIMEOUT:g} s ({self.drained} of {self.expected} jobs done)"
                )
            seen = self.drained
            await _wait_any(self.done.wait(), task, timeout=STALL_TIMEOUT)

    async def wait_probe(self, probe: int, task: asyncio.Task[None]) -> float:
        """Wait until probe ``probe``'s handler has started; return that moment."""
        deadline = time.perf_counter() + STALL_TIMEOUT
        while probe not in self.probe_started:
            if task.done():
                task.result()
                raise RuntimeError("the worker stopped during the latency phase")
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"latency job {probe} did not start within {STALL_TIMEOUT:g} s")
            self.probe_event.clear()
            await _wait_any(self.probe_event.wait(), task, timeout=left)
        return self.probe_started[probe]

    def check(self) -> None:
        """After the worker stopped: every drain job ran exactly once."""
        if self.drained != self.expected:
            raise RuntimeError(f"{self.drained} handler calls for {self.expected} jobs (a job ran twice)")


async def _wait_any(event_wait: Awaitable[bool], task: asyncio.Task[None], timeout: float) -> None:
    """Wait for ``event_wait`` or for ``task`` to end, at most ``timeout`` seconds."""
    waiter = asyncio.ensure_future(event_wait)
    try:
        await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter


async def _latency_ms(
    tally: _Tally, task: asyncio.Task[None], enqueue: Callable[[int], Awaitable[object]]
) -> float:
    """Median enqueue-to-start time of ``LATENCY_PROBES`` single jobs, in ms."""
    samples: list[float] = []
    for probe in range(LATENCY_PROBES):
        await asyncio.sleep(LATENCY_GAP)
        sent = time.perf_counter()
        await enqueue(probe)
        started = await tally.wait_probe(probe, task)
        samples.append((started - sent) * 1000.0)
    return statistics.median(samples)


async def _stop(task: asyncio.Task[None], stop: Callable[[], object]) -> None:
    """Ask the worker to stop, wait for it, and re-raise what it raised (not its cancellation)."""
    if not task.done():
        stop()
        await asyncio.wait({task})
    if not task.cancelled():
        task.result()


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Hold the named loggers at WARNING at least, for the duration."""
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _require(package: str) -> str:
    """The installed version of ``package``; RuntimeError naming the extra if it is missing."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(
            f"the {package} queue peer needs the {package} package: pip install '.[bench]'"
        ) from None


def _run(peer: str, version: str, tally: _Tally, started: float, latency: float) -> PeerRun:
    assert tally.finished_at is not None
    seconds = tally.finished_at - started
    return PeerRun(
        peer=peer,
        version=version,
        jobs=tally.expected,
        seconds=seconds,
        jobs_per_second=tally.expected / seconds,
        latency_p50_ms=latency,
    )


async def _procrastinate(dsn: str, jobs: int, concurrency: int, version: str) -> PeerRun:
    try:
        import procrastinate  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise RuntimeError(f"procrastinate cannot be imported ({exc}): pip install '.[bench]'") from exc

    tally = _Tally(jobs)
    size = concurrency + 1
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, min_size=size, max_size=size)
    )

    async def handler(probe: int = _NO_PROBE) -> None:
        tally.record(probe)

    noop = app.task(name=_TASK_NAME)(handler)

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        ids = await noop.batch_defer_async(*({} for _ in range(jobs)))
        if len(ids) != jobs:
            raise RuntimeError(f"procrastinate enqueued {len(ids)} of {jobs} jobs")

        started = time.perf_counter()
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=concurrency, wait=True, install_signal_handlers=False),
            name="procrastinate worker",
        )
        try:
            await tally.wait_drained(worker)
            latency = await _latency_ms(tally, worker, lambda probe: noop.defer_async(probe=probe))
        finally:
            await _stop(worker, worker.cancel)
    tally.check()
    return _run("procrastinate", version, tally, started, latency)


async def _pgqueuer(dsn: str, jobs: int, concurrency: int, version: str) -> PeerRun:
    try:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries, QueueManager  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise RuntimeError(f"pgqueuer cannot be imported ({exc}): pip install '.[bench]'") from exc

    tally = _Tally(jobs)
    producer = await asyncpg.connect(dsn)
    try:
        worker_connection = await asyncpg.connect(dsn)
        try:
            enqueuer = Queries(AsyncpgDriver(producer))
            await enqueuer.install()
            ids = await enqueuer.enqueue([_TASK_NAME] * jobs, [None] * jobs, [0] * jobs)
            if len(ids) != jobs:
                raise RuntimeError(f"pgqueuer enqueued {len(ids)} of {jobs} jobs")

            qm = QueueManager(Queries(AsyncpgDriver(worker_connection)))

            async def handler(job: pgqueuer.models.Job) -> None:
                tally.record(_NO_PROBE if job.payload is None else int(job.payload))

            qm.entrypoint(_TASK_NAME, concurrency_limit=concurrency, accepts_context=False)(handler)

            started = time.perf_counter()
            worker = asyncio.create_task(qm.run(batch_size=concurrency), name="pgqueuer worker")
            try:
                await tally.wait_drained(worker)
                latency = await _latency_ms(
                    tally, worker, lambda probe: enqueuer.enqueue(_TASK_NAME, str(probe).encode())
                )
            finally:
                await _stop(worker, qm.shutdown.set)
        finally:
            await worker_connection.close()
    finally:
        await producer.close()
    tally.check()
    return _run("pgqueuer", version, tally, started, latency)


async def drain_with_peer(peer: str, dsn: str, jobs: int, concurrency: int) -> PeerRun:
    """Drain ``jobs`` no-op jobs with ``peer``'s worker, then measure its wake-up latency.

    Args:
        peer: one of :data:`QUEUE_PEERS`.
        dsn: a libpq URI (``postgresql://user@host:port/name``) of an empty database
            the caller created; the library's schema is installed into it and left
            there (the caller drops the database).
        jobs: how many jobs to enqueue and drain (at least 1).
        concurrency: the worker's job slots (at least 1); see the module docstring for
            the setting each library takes it as.

    Raises:
        ValueError: an unknown peer, or jobs or concurrency below 1.
        RuntimeError: the library is not installed (the message names the package
            and ``pip install '.[bench]'``), or the drain went wrong (a job lost,
            run twice, or no progress for :data:`STALL_TIMEOUT` seconds).

    Example::

        run = await drain_with_peer("pgqueuer", "postgresql://postgres@127.0.0.1/scratch", 2000, 8)
        print(f"{run.peer} {run.version}: {run.jobs_per_second:.0f} jobs/s")
    """
    if peer not in QUEUE_PEERS:
        raise ValueError(f"unknown queue peer {peer!r}: expected one of {', '.join(QUEUE_PEERS)}")
    if jobs < 1 or concurrency < 1:
        raise ValueError(f"jobs and concurrency must be at least 1 (got {jobs} and {concurrency})")
    version = _require(peer)
    with _quiet(peer):
        if peer == "procrastinate":
            return await _procrastinate(dsn, jobs, concurrency, version)
        return await _pgqueuer(dsn, jobs, concurrency, version)


class QueuePeerJobs:
    """The ``claim_jobs`` workload by a queue peer: a :class:`~asyncstore.bench.measure.Workload`.

    Each repetition gets a fresh scratch database next to the bench's (the library's
    schema installed there by :func:`drain_with_peer`), dropped after it; the
    throughput is the drain's own seconds (enqueueing and the latency probe are not
    timed), and the latency probe's median is reported as ``start_latency_p50_ms``,
    as for asyncstore's worker.
    """

    def __init__(self, peer: str, uri: str | None, jobs: int, concurrency: int) -> None:
        self.peer, self.uri, self.jobs, self.concurrency = peer, uri, jobs, concurrency
        self.scratch: Any = None

    async def setup(self) -> None:
        """Check that the library is installed."""
        _require(self.peer)

    async def prepare(self, rep: int) -> None:
        """A fresh, empty scratch database for this repetition."""
        from asyncstore.bench.database import create_scratch

        await self._drop()
        self.scratch = await create_scratch(self.uri, f"{self.peer}_{rep}")

    async def run(self, rep: int) -> Outcome:
        """Enqueue, drain (timed), probe the idle worker's latency."""
        dsn = self.scratch.url.set(drivername="postgresql").render_as_string(hide_password=False)
        found = await drain_with_peer(self.peer, dsn, self.jobs, self.concurrency)
        extra = {"start_latency_p50_ms": round(found.latency_p50_ms, 1)} if found.latency_p50_ms is not None else {}
        return Outcome(found.jobs, extra=extra, seconds=found.seconds)

    async def teardown(self) -> None:
        """Drop the last scratch database."""
        await self._drop()

    async def _drop(self) -> None:
        if self.scratch is not None:
            await self.scratch.drop()
            self.scratch = None
