"""The workloads through MLflow's own synchronous SQL stores, called the async way.

MLflow's ``SqlAlchemyStore`` (tracking) and ``SqlAlchemyJobStore`` (jobs) are
synchronous and thread-bound, so an async web app calls them through a thread
pool. Each workload here does exactly that: every store call goes through
``loop.run_in_executor`` on a pool with as many threads as the workload has
concurrent callers (the mixed workload on SQLite: as many as MLflow's pool has
connections), against a fresh database of the same kind (SQLite file,
PostgreSQL through psycopg2, MySQL through PyMySQL), with MLflow's default
engine settings but for the pool's size (:meth:`MlflowPeer._open`). The rows are the ones asyncstore writes (:mod:`asyncstore.bench.data`).

MLflow's job store has no "claim the next job" call: jobs are handed out by an
external queue and ``claim_job(job_id)`` is a conditional update of a known id.
The ``claim_jobs`` workload therefore lists PENDING jobs, tries to claim one of
them (in random order, to spread the workers) and counts the claims it loses to
another worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import json
import logging
import os
import random
import time
import warnings
from collections.abc import Callable
from typing import Any

from asyncstore.config import Backend
from asyncstore.bench.data import SpanRow, metric_batch, span_batch
from asyncstore.bench.database import ScratchDatabase
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
    WRITE_CONCURRENCY,
    Scale,
)
from asyncstore.bench.workloads import (
    JOB_NAME,
    MIXED_WRITE_RUNS,
    RUN_SEARCHES,
    SEARCH_PAGE,
    SETUP_CONCURRENCY,
    TRACE_SEARCH_SPANS,
    TRACE_SEARCHES,
    run_fixture,
    unique,
)

INSTALL_HINT = "pip install 'asyncstore[bench]'  (or: pip install mlflow)"
_CLAIM_CANDIDATES = 16  # PENDING jobs a worker reads before trying to claim one


def _mlflow_pool(backend: Backend) -> int:
    """MLflow's engine pool in every workload, per backend: its size, and as many
    connections again as overflow (see :meth:`MlflowPeer._open`)."""
    return 10 if backend is Backend.SQLITE else 32



def _now_ms() -> int:
    # MLflow's store needs a start time; its client passes the current time like this.
    return int(time.time() * 1000)


def mlflow_available() -> bool:
    """Whether the ``mlflow`` package can be imported."""
    try:
        _import_mlflow()
    except ImportError:
        return False
    return True


def _import_mlflow() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own import-time deprecation noise
        import mlflow
        import mlflow.store.jobs.sqlalchemy_store
        import mlflow.store.tracking.sqlalchemy_store
    return mlflow


class MlflowPeer:
    """MLflow's tracking and job stores on one fresh database.

    Args:
        scratch: the database for MLflow (not the one asyncstore uses: same table names).
    """

    def __init__(self, scratch: ScratchDatabase) -> None:
        self.scratch = scratch
        self.tracking: Any = None
        self.jobs: Any = None

    async def open(self) -> None:
        """Create MLflow's schema (its own migrations, untimed) and the two stores."""
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        _import_mlflow()
        from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        for name in ("alembic", "mlflow"):  # keep the migration chatter off the terminal
            logging.getLogger(name).setLevel(logging.WARNING)
        artifacts = os.path.join(os.path.dirname(self.scratch.name) if self.scratch.tempdir else ".", "mlartifacts")
        # MLflow's default pool (5 connections + 10 overflow) makes the callers of the
        # mixed workload (64 threads) time out waiting for a connection, and so does
        # 10 + 10 on PostgreSQL: on a server MLflow gets 32 + 32, a connection for
        # every thread; on SQLite 10 + 10 (with more, its writers fail with
        # "database is locked"), and the mixed workload's callers share as many
        # threads as that (Mixed.setup).
        size = str(_mlflow_pool(self.scratch.backend))
        pool = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": size, "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": size}
        saved = {name: os.environ.get(name) for name in pool}
        os.environ.update(pool)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.tracking = SqlAlchemyStore(self.scratch.sync_uri(), artifacts)
                self.jobs = SqlAlchemyJobStore(self.scratch.sync_uri())
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    async def close(self) -> None:
        """Dispose MLflow's engines (it caches them per URI) so the database can be dropped."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        from mlflow.store.jobs.sqlalchemy_store import SqlAlchemyJobStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        uri = self.scratch.sync_uri()
        for cls in (SqlAlchemyStore, SqlAlchemyJobStore):
            engine = getattr(cls, "_engine_map", {}).pop(uri, None)
            if engine is not None:
                engine.dispose()
        for store in (self.tracking, self.jobs):
            if store is not None:
                store.engine.dispose()


class _MlflowWorkload:
    """A workload whose every MLflow call runs on a thread pool of ``threads`` threads."""

    threads = 1

    def __init__(self, peer: MlflowPeer, scale: Scale) -> None:
        self.peer = peer
        self.store = peer.tracking
        self.scale = scale
        self.experiment_id = ""
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` on the pool, as an async app would."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def setup(self) -> None:
        """The thread pool and the workload's experiment."""
        self.pool = concurrent.futures.ThreadPoolExecutor(max(self.threads, SETUP_CONCURRENCY), "mlflow-bench")
        self.experiment_id = await self.call(self.store.create_experiment, unique(type(self).__name__.lower()))

    async def prepare(self, rep: int) -> None:
        """Nothing to prepare by default."""

    async def run(self, rep: int) -> Outcome:
        """Repetition ``rep``: the timed part (every workload has its own)."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Stop the thread pool."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    async def _filled_runs(self, count: int) -> list[str]:
        from mlflow.entities import Metric, Param, RunTag

        run_ids: list[str] = [""] * count

        async def make(i: int) -> None:
            metrics, params, tags = run_fixture(i)
            run = await self.call(self.store.create_run, self.experiment_id, "bench", 1_760_000_000_000 + i, [], f"run-{i}")
            await self.call(
                self.store.log_batch,
                run.info.run_id,
                [Metric(k, v, ts, st) for k, v, ts, st in metrics],
                [Param(k, v) for k, v in params],
                [RunTag(k, v) for k, v in tags],
            )
            run_ids[i] = run.info.run_id

        await fan_out(count, SETUP_CONCURRENCY, make)
        return run_ids


class CreateRuns(_MlflowWorkload):
    """An experiment, then runs in it, from concurrent callers."""

    threads = WRITE_CONCURRENCY

    async def run(self, rep: int) -> Outcome:
        """Create the experiment and the runs."""
        experiment_id = await self.call(self.store.create_experiment, unique(f"create-{rep}"))

        async def create(i: int) -> None:
            await self.call(self.store.create_run, experiment_id, "bench", _now_ms(), [], f"run-{i}")

        await fan_out(self.scale.runs_created, WRITE_CONCURRENCY, create)
        return Outcome(self.scale.runs_created)


class LogBatch(_MlflowWorkload):
    """1,000-metric ``log_batch`` calls to a fresh run, one after the other."""

    async def prepare(self, rep: int) -> None:
        """A fresh run and this repetition's metrics."""
        from mlflow.entities import Metric

        run = await self.call(self.store.create_run, self.experiment_id, "bench", _now_ms(), [], f"log-batch-{rep}")
        self.run_id = run.info.run_id
        n = self.scale.metric_batches
        self.batches = [[Metric(m.key, m.value, m.timestamp, m.step) for m in metric_batch(rep, b, n)] for b in range(n)]

    async def run(self, rep: int) -> Outcome:
        """Log every batch."""
        for batch in self.batches:
            await self.call(self.store.log_batch, self.run_id, batch, [], [])
        return Outcome(len(self.batches) * METRIC_BATCH)


class GetRun(_MlflowWorkload):
    """``get_run`` from 32 concurrent callers over a pool of filled runs."""

    threads = GET_RUN_CONCURRENCY

    async def setup(self) -> None:
        """The experiment and its runs."""
        await super().setup()
        self.run_ids = await self._filled_runs(self.scale.get_run_pool)

    async def run(self, rep: int) -> Outcome:
        """Read runs; record each call's latency."""
        latencies: list[float] = []
        ids = self.run_ids

        async def get(i: int) -> None:
            await timed(lambda: self.call(self.store.get_run, ids[(i * 31 + rep) % len(ids)]), latencies)

        await fan_out(self.scale.get_run_calls, GET_RUN_CONCURRENCY, get)
        return Outcome(self.scale.get_run_calls, latencies=latencies)


class SearchRuns(_MlflowWorkload):
    """Run search over the filled runs."""

    threads = SEARCH_CONCURRENCY

    async def setup(self) -> None:
        """The experiment and its runs."""
        await super().setup()
        await self._filled_runs(self.scale.searched_runs)

    async def run(self, rep: int) -> Outcome:
        """Search, alternating the filtered and the plain query."""
        from mlflow.entities import ViewType

        async def search(i: int) -> None:
            filter_string, order_by = RUN_SEARCHES[i % len(RUN_SEARCHES)]
            found = await self.call(
                self.store.search_runs, [self.experiment_id], filter_string, ViewType.ACTIVE_ONLY,
                SEARCH_PAGE, order_by or None,
            )
            if not found:
                raise RuntimeError(f"MLflow run search {filter_string!r} found nothing; the workload is broken")

        await fan_out(self.scale.run_searches, SEARCH_CONCURRENCY, search)
        return Outcome(self.scale.run_searches)


def to_mlflow_spans(rows: list[SpanRow]) -> list[Any]:
    """MLflow ``Span`` entities (OpenTelemetry spans with MLflow's attributes) of generated rows."""
    from mlflow.entities import Span
    from mlflow.tracing.utils import build_otel_context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import Status, StatusCode

    spans = []
    for r in rows:
        otel_trace = int(r.trace_id.removeprefix("tr-"), 16)
        attributes = {"mlflow.traceRequestId": json.dumps(r.trace_id), "mlflow.spanType": json.dumps(r.span_type)}
        attributes.update({key: json.dumps(value) for key, value in r.attributes.items()})
        parent = build_otel_context(otel_trace, int(r.parent_span_id, 16)) if r.parent_span_id else None
        spans.append(
            Span(
                ReadableSpan(
                    name=r.name, context=build_otel_context(otel_trace, int(r.span_id, 16)), parent=parent,
                    start_time=r.start_ns, end_time=r.end_ns, attributes=attributes,
                    status=Status(StatusCode.OK), resource=Resource.get_empty(),
                )
            )
        )
    return spans


class LogSpans(_MlflowWorkload):
    """1,000-span ``log_spans`` calls, one after the other."""

    async def prepare(self, rep: int) -> None:
        """This repetition's spans (new traces every repetition)."""
        salt = f"log-spans-mlflow-{self.experiment_id}"
        self.batches = [to_mlflow_spans(span_batch(salt, rep, b)) for b in range(self.scale.span_batches)]

    async def run(self, rep: int) -> Outcome:
        """Ingest every batch."""
        for batch in self.batches:
            await self.call(self.store.log_spans, self.experiment_id, batch)
        return Outcome(len(self.batches) * SPAN_BATCH)


class SearchTraces(_MlflowWorkload):
    """Trace search over ingested traces."""

    threads = SEARCH_CONCURRENCY

    async def setup(self) -> None:
        """The experiment and its traces (10 spans each)."""
        await super().setup()
        per_batch = SPAN_BATCH // TRACE_SEARCH_SPANS
        salt = f"search-traces-mlflow-{self.experiment_id}"
        for b in range(-(-self.scale.searched_traces // per_batch)):
            rows = span_batch(salt, 0, b, size=SPAN_BATCH, per_trace=TRACE_SEARCH_SPANS)
            await self.call(self.store.log_spans, self.experiment_id, to_mlflow_spans(rows))

    async def run(self, rep: int) -> Outcome:
        """Search, alternating the span-name and the plain query."""

        async def search(i: int) -> None:
            filter_string, order_by = TRACE_SEARCHES[i % len(TRACE_SEARCHES)]
            found, _ = await self.call(
                self.store.search_traces, experiment_ids=[self.experiment_id], filter_string=filter_string or None,
                max_results=SEARCH_PAGE, order_by=order_by,
            )
            if not found:
                raise RuntimeError(f"MLflow trace search {filter_string!r} found nothing; the workload is broken")

        await fan_out(self.scale.trace_searches, SEARCH_CONCURRENCY, search)
        return Outcome(self.scale.trace_searches)


class ClaimJobs(_MlflowWorkload):
    """8 workers: list PENDING jobs, claim one by id, finish it (see the module docstring)."""

    threads = JOB_WORKERS

    async def setup(self) -> None:
        """The thread pool (jobs need no experiment)."""
        self.pool = concurrent.futures.ThreadPoolExecutor(max(self.threads, SETUP_CONCURRENCY), "mlflow-bench")

    async def prepare(self, rep: int) -> None:
        """Queue this repetition's jobs, one ``create_job`` each (MLflow has no batch call)."""
        self.job_name = f"{JOB_NAME}.{rep}"

        async def create(i: int) -> None:
            await self.call(self.peer.jobs.create_job, self.job_name, json.dumps({"n": i}))

        await fan_out(self.scale.jobs, SETUP_CONCURRENCY, create)

    def _pending(self) -> list[Any]:
        from mlflow.entities._job_status import JobStatus

        listing = self.peer.jobs.list_jobs(job_name=self.job_name, statuses=[JobStatus.PENDING])
        try:
            return list(itertools.islice(listing, _CLAIM_CANDIDATES))
        finally:
            listing.close()  # the generator holds a session open until closed

    async def run(self, rep: int) -> Outcome:
        """Claim and finish until no PENDING job is left."""
        from mlflow.store.jobs.abstract_store import JobUpdateStatus

        done = 0
        lost = 0

        async def worker(index: int) -> None:
            nonlocal done, lost
            rng = random.Random(index)
            while True:
                candidates = await self.call(self._pending)
                if not candidates:
                    return
                rng.shuffle(candidates)
                for job in candidates:
                    status = await self.call(self.peer.jobs.claim_job, job.job_id, 60.0)
                    if status == JobUpdateStatus.APPLIED:
                        await self.call(self.peer.jobs.finish_job, job.job_id, "ok")
                        done += 1
                        break
                    lost += 1

        await fan_out(JOB_WORKERS, JOB_WORKERS, worker)
        if done != self.scale.jobs:
            raise RuntimeError(f"MLflow workers finished {done} of {self.scale.jobs} jobs")
        return Outcome(done, extra={"lost_claims": lost})


class Mixed(_MlflowWorkload):
    """Reads alone, then ``get_run`` and ``log_batch`` of 100 metrics at 4:1, from 64 callers.

    The callers share a thread for every connection of MLflow's pool (64 on a server,
    20 on SQLite), as a threaded web app's handlers share its worker threads: with
    more threads than connections, MLflow's calls on SQLite waited more than the
    pool's 30 s for a connection and failed.
    """

    async def setup(self) -> None:
        """The experiment, the runs read and the runs written."""
        self.threads = min(MIXED_CONCURRENCY, 2 * _mlflow_pool(self.peer.scratch.backend))
        await super().setup()
        self.read_ids = await self._filled_runs(self.scale.get_run_pool)
        self.write_ids = []
        for i in range(MIXED_WRITE_RUNS):
            run = await self.call(self.store.create_run, self.experiment_id, "bench", _now_ms(), [], f"training-{i}")
            self.write_ids.append(run.info.run_id)

    async def run(self, rep: int) -> Outcome:
        """One repetition of :func:`~asyncstore.bench.measure.mixed_load`."""
        from mlflow.entities import Metric

        async def read(i: int) -> None:
            await self.call(self.store.get_run, self.read_ids[(i * 31 + rep) % len(self.read_ids)])

        async def write(i: int) -> None:
            rows = metric_batch(rep, i, self.scale.mixed_calls, size=MIXED_METRICS)
            metrics = [Metric(m.key, m.value, m.timestamp, m.step) for m in rows]
            await self.call(self.store.log_batch, self.write_ids[i % len(self.write_ids)], metrics, [], [])

        return await mixed_load(
            read, write, calls=self.scale.mixed_calls, concurrency=MIXED_CONCURRENCY, write_every=MIXED_WRITE_EVERY
        )


MLFLOW_WORKLOADS: dict[str, type[_MlflowWorkload]] = {
    "create_runs": CreateRuns,
    "log_batch": LogBatch,
    "get_run": GetRun,
    "search_runs": SearchRuns,
    "log_spans": LogSpans,
    "search_traces": SearchTraces,
    "claim_jobs": ClaimJobs,
    "mixed": Mixed,
}
