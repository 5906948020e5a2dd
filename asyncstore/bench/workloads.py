"""The benchmark workloads, and asyncstore doing each of them.

:data:`SPECS` names every workload, its unit and its concurrency; the classes
below are asyncstore's side (an open :class:`~asyncstore.AsyncStore`). The same
workloads through MLflow are in :mod:`asyncstore.bench.mlflow_peer`, and the
raw-driver ceilings in :mod:`asyncstore.bench.raw`. :func:`variants` makes the
workloads of the command's extra options (other batch sizes and worker counts, the
million-span memory run, the 10,000-run search).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from asyncstore.bench.data import SpanRow, metric_batch, span_batch, to_metrics, to_spans
from asyncstore.bench.measure import Outcome, fan_out, mixed_load, timed
from asyncstore.bench.scale import (
    GET_RUN_CONCURRENCY,
    JOB_WORKERS,
    METRIC_BATCH,
    MIXED_CONCURRENCY,
    MIXED_METRICS,
    MIXED_WRITE_EVERY,
    SEARCH_CONCURRENCY,
    SPAN_BATCH,
    SPANS_PER_TRACE,
    WRITE_CONCURRENCY,
    Scale,
)
from asyncstore.entities import (
    Metric,
    NewJob,
    Param,
    RunTag,
)
from asyncstore.config import Backend
from asyncstore.store import AsyncStore

SETUP_CONCURRENCY = 8
"""Concurrent callers while filling the database before a read workload (untimed)."""
TRACE_SEARCH_SPANS = 10
"""Spans per trace in the traces that trace search scans."""
SEARCH_PAGE = 100
"""max_results of every search call (a dashboard page)."""
RUN_SEARCHES: tuple[tuple[str, list[str]], ...] = (
    # (filter, order_by): a filtered, metric-ordered search and a plain listing.
    ("metrics.loss < 0.5 and params.model = 'b'", ["metrics.accuracy DESC"]),
    ("", []),
)
TRACE_SEARCHES: tuple[tuple[str, list[str]], ...] = (
    # (filter, order_by): traces containing a given span, and the latest traces.
    ("span.name = 'tool_3'", ["timestamp_ms DESC"]),
    ("", ["timestamp_ms DESC"]),
)
JOB_NAME = "bench.noop"
LATENCY_PROBES = 20
"""Single jobs sent to an idle worker to measure enqueue-to-start latency."""
LATENCY_IDLE_SECONDS = 1.5
"""How long the probed worker idles first (its polling backs off to the longest wait)."""
LATENCY_SPACING_SECONDS = 0.1
MIXED_WRITE_RUNS = 16
"""Runs the ``mixed`` workload's writes log to (runs in training), apart from the runs it reads."""
ON_MLFLOW_SCHEMA = "asyncstore_on_mlflow_schema"
"""The system that is asyncstore on a database MLflow created (its tables and indexes,
not asyncstore's), measured with ``--compare mlflow`` so that the ratio to MLflow is
also taken on identical tables."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """One workload: what it measures and how.

    Attributes:
        name: the workload's name on the command line and in the JSON.
        unit: what its throughput counts, per second.
        description: one line for the table's footnotes.
        concurrency: concurrent callers during the timed part.
        size: the number of calls/items per repetition at a scale.
        raw: whether a raw-driver ceiling is measured for it.
        family: the workload it is a variant of (its class); "" for itself.
        batch: rows per call of a batch-size variant (0: the default, 1,000).
        raw_fk: whether the identical-table ceiling (foreign keys included) is measured.
        naive: whether the naive claim loop is measured beside it (jobs).
        once: measured once without warm-up (the million-span memory run).
        mlflow: whether ``--compare mlflow`` measures it.
        runs: runs in the experiment searched (``search_scale``).
        direct: whether the in-process ceiling of the OTLP workloads is measured (the
            same spans written by ``store.spans.log_spans``, without HTTP).
        minutes: how long a time-bound workload runs (the OTLP soak); 0: ``size`` items.
    """

    name: str
    unit: str
    description: str
    concurrency: int
    size: Callable[[Scale], int]
    raw: bool = False
    family: str = ""
    batch: int = 0
    raw_fk: bool = False
    naive: bool = False
    once: bool = False
    mlflow: bool = True
    runs: int = 0
    direct: bool = False
    minutes: float = 0

    @property
    def kind(self) -> str:
        """The workload class's name in :data:`STORE_WORKLOADS`."""
        return self.family or self.name

    def systems(self, compare: bool, queue_peers: Sequence[str] = (), backend: Backend | None = None) -> list[str]:
        """The systems measured for this workload, asyncstore first.

        ``queue_peers`` (procrastinate, pgqueuer: ``--compare``) drain the jobs of the
        ``claim_jobs`` workloads. On MySQL/MariaDB (``backend``) the write workloads
        with both ceilings also get ``raw_insert`` (multi-row INSERT beside LOAD DATA).
        """
        found = ["asyncstore"]
        found += ["raw"] * self.raw + ["raw_fk"] * self.raw_fk
        found += ["raw_insert"] * (self.raw_fk and backend is Backend.MYSQL)
        found += ["naive"] * self.naive + ["direct"] * self.direct
        found += [ON_MLFLOW_SCHEMA, "mlflow"] * (compare and self.mlflow)
        return found + list(queue_peers) * (self.kind == "claim_jobs")


SPECS: tuple[Spec, ...] = (
    Spec("create_runs", "runs/s", f"create an experiment, then runs in it ({WRITE_CONCURRENCY} concurrent callers)",
         WRITE_CONCURRENCY, lambda s: s.runs_created),
    Spec("log_batch", "metrics/s", f"log_batch of {METRIC_BATCH} metrics (100 keys x 10 steps) to one run, one caller",
         1, lambda s: s.metric_batches * METRIC_BATCH, raw=True, raw_fk=True),
    Spec("get_run", "calls/s", f"get_run of runs with 20 metrics, 10 params, 5 tags ({GET_RUN_CONCURRENCY} concurrent callers)",
         GET_RUN_CONCURRENCY, lambda s: s.get_run_calls, raw=True),
    Spec("search_runs", "searches/s", f"search_runs over 1,000+ runs, filtered by metric and param or not, {SEARCH_PAGE} per page "
         f"({SEARCH_CONCURRENCY} concurrent callers)", SEARCH_CONCURRENCY, lambda s: s.run_searches, raw=True),
    Spec("log_spans", "spans/s", f"ingest {SPAN_BATCH}-span batches ({SPANS_PER_TRACE} spans per trace, ~1 KB JSON each), one caller",
         1, lambda s: s.span_batches * SPAN_BATCH, raw=True, raw_fk=True),
    Spec("search_traces", "searches/s", f"search_traces by span name or latest first, {SEARCH_PAGE} per page "
         f"({SEARCH_CONCURRENCY} concurrent callers)", SEARCH_CONCURRENCY, lambda s: s.trace_searches, raw=True),
    Spec("claim_jobs", "jobs/s", f"drain queued no-op jobs: asyncstore's Worker at concurrency {JOB_WORKERS} (batched "
         "claims and finishes); raw and naive: claim + finish one job at a time",
         JOB_WORKERS, lambda s: s.jobs, raw=True),
    Spec("mixed", "calls/s", f"a web app's load: get_run and log_batch of {MIXED_METRICS} metrics at "
         f"{MIXED_WRITE_EVERY - 1}:1 ({MIXED_CONCURRENCY} concurrent callers), beside the same callers making only "
         "the reads", MIXED_CONCURRENCY, lambda s: s.mixed_calls),
)
SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


def unique(label: str) -> str:
    """A name no earlier run of the benchmark used (experiment names are unique)."""
    return f"bench-{label}-{secrets.token_hex(4)}"


def run_fixture(index: int) -> tuple[list[tuple[str, float, int, int]], list[tuple[str, str]], list[tuple[str, str]]]:
    """Metrics, params and tags of a run the read workloads fill the database with.

    Returns (key, value, timestamp, step) metrics, (key, value) params and tags: 20
    metrics (``loss`` and ``accuracy`` among them), 10 params (``model`` cycles
    through a-d), 5 tags.
    """
    now = 1_760_000_000_000 + index
    loss = (index * 7919 % 1000) / 1000
    metrics = [("loss", loss, now, 0), ("accuracy", 1 - loss, now, 0)]
    metrics += [(f"metric_{k:02d}", (index + k) % 97 / 97, now, 0) for k in range(18)]
    params = [("model", "abcd"[index % 4])] + [(f"param_{k}", str(index % (k + 2))) for k in range(9)]
    tags = [("team", "bench")] + [(f"tag_{k}", f"value-{index % 5}") for k in range(4)]
    return metrics, params, tags


class _StoreWorkload:
    """Shared plumbing of the asyncstore workloads."""

    def __init__(self, store: AsyncStore, scale: Scale, spec: Spec | None = None) -> None:
        self.store = store
        self.scale = scale
        self.spec = spec if spec is not None else SPEC_BY_NAME[STORE_NAMES[type(self)]]
        self.experiment_id = ""

    async def setup(self) -> None:
        """Create the workload's experiment."""
        self.experiment_id = await self.store.experiments.create(unique(type(self).__name__.lower()))

    async def prepare(self, rep: int) -> None:
        """Nothing to prepare by default."""

    async def run(self, rep: int) -> Outcome:
        """Repetition ``rep``: the timed part (every workload has its own)."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Nothing to release: the runner closes the store."""

    async def _filled_runs(self, count: int) -> list[str]:
        run_ids: list[str] = [""] * count

        async def make(i: int) -> None:
            metrics, params, tags = run_fixture(i)
            run = await self.store.runs.create(self.experiment_id, run_name=f"run-{i}", start_time=1_760_000_000_000 + i)
            await self.store.runs.log_batch(
                run.info.run_id,
                metrics=[Metric(k, v, ts, st) for k, v, ts, st in metrics],
                params=[Param(k, v) for k, v in params],
                tags=[RunTag(k, v) for k, v in tags],
            )
            run_ids[i] = run.info.run_id

        await fan_out(count, SETUP_CONCURRENCY, make)
        return run_ids


class _ReadWorkload(_StoreWorkload):
    """A read workload: its calls are a few distinct ones, repeated.

    :meth:`calls` lists the distinct calls and :meth:`which` says which of them call
    ``i`` of repetition ``rep`` makes, so that the raw-driver ceiling
    (:class:`asyncstore.bench.raw.RawReads`) replays exactly the same work.
    """

    latency = False
    """Whether each call's latency is recorded (p50/p99)."""

    def calls(self) -> list[Callable[[], Awaitable[Any]]]:
        """The distinct calls (after :meth:`setup`)."""
        raise NotImplementedError

    def which(self, i: int, rep: int) -> int:
        """The index in :meth:`calls` of call ``i`` of repetition ``rep``: round robin."""
        return i % len(self.distinct)

    async def setup(self) -> None:
        """The experiment, its data (:meth:`fill`), the distinct calls."""
        await super().setup()
        await self.fill()
        self.distinct = self.calls()

    async def fill(self) -> None:
        """Fill the database (untimed)."""

    async def run(self, rep: int) -> Outcome:
        """Make this repetition's calls from ``concurrency`` callers."""
        latencies: list[float] = []
        count = self.spec.size(self.scale)

        async def one(i: int) -> None:
            call = self.distinct[self.which(i, rep)]
            if self.latency:
                await timed(call, latencies)
            else:
                await call()

        await fan_out(count, self.spec.concurrency, one)
        return Outcome(count, latencies=latencies if self.latency else None)


class CreateRuns(_StoreWorkload):
    """An experiment, then ``runs_created`` runs in it from concurrent callers."""

    async def setup(self) -> None:
        """Nothing: each repetition creates its own experiment."""

    async def run(self, rep: int) -> Outcome:
        """Create the experiment and the runs."""
        experiment_id = await self.store.experiments.create(unique(f"create-{rep}"))

        async def create(i: int) -> None:
            await self.store.runs.create(experiment_id, run_name=f"run-{i}", user_id="bench")

        await fan_out(self.scale.runs_created, WRITE_CONCURRENCY, create)
        return Outcome(self.scale.runs_created)


class LogBatch(_StoreWorkload):
    """1,000-metric (or ``spec.batch``) ``log_batch`` calls to a fresh run, one after the other."""

    async def prepare(self, rep: int) -> None:
        """A fresh run and this repetition's metrics."""
        run = await self.store.runs.create(self.experiment_id, run_name=f"log-batch-{rep}")
        self.run_id = run.info.run_id
        size = self.spec.batch or METRIC_BATCH
        n = self.spec.size(self.scale) // size
        self.batches = [to_metrics(metric_batch(rep, b, n, size=size)) for b in range(n)]

    async def run(self, rep: int) -> Outcome:
        """Log every batch."""
        for batch in self.batches:
            await self.store.runs.log_batch(self.run_id, metrics=batch)
        return Outcome(sum(len(b) for b in self.batches))


class GetRun(_ReadWorkload):
    """``get_run`` from 32 concurrent tasks over a pool of filled runs."""

    latency = True

    async def fill(self) -> None:
        """The runs read."""
        self.run_ids = await self._filled_runs(self.scale.get_run_pool)

    def calls(self) -> list[Callable[[], Awaitable[Any]]]:
        """``get_run`` of each run."""
        return [functools.partial(self.store.runs.get, run_id) for run_id in self.run_ids]

    def which(self, i: int, rep: int) -> int:
        """Runs in a scattered order, shifted every repetition."""
        return (i * 31 + rep) % len(self.run_ids)


def _search_runs(store: AsyncStore, experiment_id: str, filter_string: str, order_by: list[str], page: int
                 ) -> Callable[[], Awaitable[Any]]:
    async def search() -> None:
        found = await store.runs.search([experiment_id], filter_string=filter_string, order_by=order_by, max_results=page)
        if not found.items:
            raise RuntimeError(f"run search {filter_string!r} found nothing; the workload is broken")

    return search


class SearchRuns(_ReadWorkload):
    """Run search over ``searched_runs`` filled runs, alternating the filtered and the plain query."""

    async def fill(self) -> None:
        """The runs searched."""
        await self._filled_runs(self.scale.searched_runs)

    def calls(self) -> list[Callable[[], Awaitable[Any]]]:
        """One search per query of :data:`RUN_SEARCHES`."""
        return [_search_runs(self.store, self.experiment_id, f, o, SEARCH_PAGE) for f, o in RUN_SEARCHES]


class LogSpans(_StoreWorkload):
    """1,000-span (or ``spec.batch``) ingestion calls, one after the other."""

    salt = "log-spans"

    async def prepare(self, rep: int) -> None:
        """This repetition's spans (new traces every repetition)."""
        salt = f"{self.salt}-{self.experiment_id}"
        size = self.spec.batch or SPAN_BATCH
        calls = self.spec.size(self.scale) // size
        self.batches = [to_spans(span_batch(salt, rep, b, size=size)) for b in range(calls)]

    async def run(self, rep: int) -> Outcome:
        """Ingest every batch."""
        for batch in self.batches:
            await self.store.spans.log_spans(self.experiment_id, batch)
        return Outcome(sum(len(b) for b in self.batches))


class SearchTraces(_ReadWorkload):
    """Trace search over ``searched_traces`` ingested traces, by span name or latest first."""

    async def fill(self) -> None:
        """The traces (10 spans each)."""
        per_batch = SPAN_BATCH // TRACE_SEARCH_SPANS
        salt = f"search-traces-{self.experiment_id}"
        for b in range(-(-self.scale.searched_traces // per_batch)):
            rows = span_batch(salt, 0, b, size=SPAN_BATCH, per_trace=TRACE_SEARCH_SPANS)
            await self.store.spans.log_spans(self.experiment_id, to_spans(rows))

    def calls(self) -> list[Callable[[], Awaitable[Any]]]:
        """One search per query of :data:`TRACE_SEARCHES`."""

        def search(filter_string: str, order_by: list[str]) -> Callable[[], Awaitable[Any]]:
            async def call() -> None:
                page = await self.store.traces.search(
                    [self.experiment_id], filter_string=filter_string, order_by=order_by, max_results=SEARCH_PAGE
                )
                if not page.items:
                    raise RuntimeError(f"trace search {filter_string!r} found nothing; the workload is broken")

            return call

        return [search(f, o) for f, o in TRACE_SEARCHES]


class ClaimJobs(_StoreWorkload):
    """Workers (8, or ``spec.concurrency``) claiming and finishing the queued jobs until none is left."""

    counters: tuple[str, ...] = ("empty_claims",)
    """What the workers count (reported as extra figures)."""

    async def setup(self) -> None:
        """Nothing: jobs need no experiment."""

    async def prepare(self, rep: int) -> None:
        """Queue this repetition's jobs (a job name of their own)."""
        self.job_name = f"{JOB_NAME}.{self.spec.name}.{type(self).__name__}.{rep}"
        todo = self.scale.jobs
        while todo > 0:
            chunk = min(todo, 500)
            await self.store.jobs.create_many([NewJob(self.job_name, {"n": i}) for i in range(chunk)])
            todo -= chunk

    async def claim(self) -> str | None:
        """Claim one job; its id, or None when none was free."""
        jobs = await self.store.jobs.claim([self.job_name], limit=1, lease_seconds=60)
        return jobs[0].job_id if jobs else None

    async def finish(self, job_id: str) -> None:
        """Finish a claimed job."""
        await self.store.jobs.finish(job_id, "ok")

    async def run(self, rep: int) -> Outcome:
        """Claim one job at a time and finish it, from every worker."""
        total = self.scale.jobs
        done = 0
        self.counts = dict.fromkeys(self.counters, 0)

        async def worker() -> None:
            nonlocal done
            while done < total:
                job_id = await self.claim()
                if job_id is None:
                    # Nothing free right now: others hold the last jobs, or skipped them.
                    self.counts["empty_claims"] += 1
                    await asyncio.sleep(0.001)
                    continue
                await self.finish(job_id)
                done += 1

        started = time.monotonic()
        workers = self.spec.concurrency
        await fan_out(workers, workers, lambda _: worker())
        if done != total:
            raise RuntimeError(f"{done} of {total} jobs finished in {time.monotonic() - started:.1f}s")
        return Outcome(total, extra=dict(self.counts))


class WorkerClaimJobs(ClaimJobs):
    """asyncstore's :class:`~asyncstore.worker.Worker` running no-op handlers until the queue is drained.

    Concurrency ``spec.concurrency`` (claims of up to that many jobs, results written
    by batched finishes). Timed: from the worker's start until its last result is
    committed. Then, untimed, the enqueue-to-start latency with the worker idle
    (:data:`LATENCY_PROBES` single jobs, each from just before ``create`` to its
    handler's start), reported as ``start_latency_p50_ms`` / ``_max_ms``.
    """

    counters = ()

    async def run(self, rep: int) -> Outcome:
        """Drain the queue with one worker; then probe the idle worker's wake-up."""
        from asyncstore.worker import Worker

        total = self.scale.jobs
        done = 0
        drained = asyncio.Event()

        async def noop(params: dict[str, Any], ctx: Any) -> str:
            nonlocal done
            done += 1
            if done == total:
                drained.set()
            return "ok"

        worker = Worker(self.store, {self.job_name: noop}, concurrency=self.spec.concurrency, lease_seconds=60)
        started = time.perf_counter()
        running = asyncio.create_task(worker.run())
        await asyncio.wait([running, asyncio.create_task(drained.wait())], return_when=asyncio.FIRST_COMPLETED)
        worker.stop()
        await running
        seconds = time.perf_counter() - started
        if worker.counts["succeeded"] != total:
            raise RuntimeError(f"the worker finished {worker.counts} of {total} jobs")
        latencies = await self._start_latencies()
        extra = {
            "start_latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "start_latency_max_ms": round(max(latencies) * 1000, 1),
        }
        return Outcome(total, extra=extra, seconds=seconds)

    async def _start_latencies(self) -> list[float]:
        """Seconds from enqueue to handler start of single jobs sent to an idle worker (default polling)."""
        from asyncstore.worker import Worker

        name = f"{self.job_name}.probe"
        started: asyncio.Queue[float] = asyncio.Queue()

        async def mark(params: dict[str, Any], ctx: Any) -> str:
            started.put_nowait(time.perf_counter())
            return "ok"

        worker = Worker(self.store, {name: mark}, concurrency=1)
        running = asyncio.create_task(worker.run())
        latencies = []
        try:
            await asyncio.sleep(LATENCY_IDLE_SECONDS)  # idle: polling has backed off to its longest wait
            for i in range(LATENCY_PROBES):
                sent = time.perf_counter()
                await self.store.jobs.create(name, {"probe": i})
                latencies.append(await asyncio.wait_for(started.get(), 30) - sent)
                await asyncio.sleep(LATENCY_SPACING_SECONDS)
        finally:
            worker.stop()
            await running
        return latencies


class Mixed(_StoreWorkload):
    """Reads alone, then reads and writes at 4:1, from 64 callers (:func:`~asyncstore.bench.measure.mixed_load`).

    The reads are ``get_run`` of filled runs, as in ``get_run``; the writes are
    ``log_batch`` calls of 100 metrics (a new step each) to other runs.
    """

    async def setup(self) -> None:
        """The experiment, the runs read and the runs written."""
        await super().setup()
        self.read_ids = await self._filled_runs(self.scale.get_run_pool)
        self.write_ids = [
            (await self.store.runs.create(self.experiment_id, run_name=f"training-{i}")).info.run_id
            for i in range(MIXED_WRITE_RUNS)
        ]

    async def run(self, rep: int) -> Outcome:
        """One repetition of :func:`~asyncstore.bench.measure.mixed_load`."""

        async def read(i: int) -> None:
            await self.store.runs.get(self.read_ids[(i * 31 + rep) % len(self.read_ids)])

        async def write(i: int) -> None:
            metrics = to_metrics(metric_batch(rep, i, self.scale.mixed_calls, size=MIXED_METRICS))
            await self.store.runs.log_batch(self.write_ids[i % len(self.write_ids)], metrics=metrics)

        return await mixed_load(
            read, write, calls=self.scale.mixed_calls, concurrency=self.spec.concurrency, write_every=MIXED_WRITE_EVERY
        )


STORE_WORKLOADS: dict[str, type[_StoreWorkload]] = {
    "create_runs": CreateRuns,
    "log_batch": LogBatch,
    "get_run": GetRun,
    "search_runs": SearchRuns,
    "log_spans": LogSpans,
    "search_traces": SearchTraces,
    "claim_jobs": WorkerClaimJobs,
    "mixed": Mixed,
}
STORE_NAMES = {cls: name for name, cls in STORE_WORKLOADS.items()}

