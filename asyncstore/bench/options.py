"""The workloads of ``asyncstore bench``'s extra options.

``--batch-sizes`` and ``--job-workers`` make variants of ``log_batch``,
``log_spans`` and ``claim_jobs`` (same classes, another size); ``--million`` adds
the million-span memory run (:class:`MillionSpans`), ``--search-scale`` the
10,000-run search (:class:`SearchScale`). :class:`NaiveClaimJobs` is the naive
claim loop measured beside ``claim_jobs``. :data:`OPT_IN` are the workloads that run
only when ``--workload`` names them (they start server processes:
:mod:`asyncstore.bench.otlp`); ``--otlp-minutes`` sets the OTLP soak's duration.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import resource
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import schema
from asyncstore.bench.data import hex_id, span_batch, to_spans
from asyncstore.bench.measure import Outcome
from asyncstore.bench.otlp import OTLP_INGEST, SOAK_MINUTES, OtlpIngest, soak_spec
from asyncstore.bench.scale import JOB_WORKERS, METRIC_BATCH, SPAN_BATCH, Scale
from asyncstore.bench.workloads import (
    STORE_WORKLOADS,
    ClaimJobs,
    Spec,
    _ReadWorkload,
    _search_runs,
    _StoreWorkload,
)
from asyncstore.config import Backend
from asyncstore.entities import JobStatus
from asyncstore.store import AsyncStore

SCALE_RUNS = 10_000
"""Runs in the ``--search-scale`` experiment (each with 20 metrics)."""
SCALE_METRICS = 20
SCALE_QUERIES: dict[str, tuple[str, str, list[str], int]] = {
    # name suffix: (what it is, filter, order_by, page size) of the --search-scale workloads.
    "order_p100": ("a metric filter ordered by another metric, page of 100", "metrics.m1 < 0.5", ["metrics.m2 DESC"], 100),
    "order_p1000": ("a metric filter ordered by another metric, page of 1,000", "metrics.m1 < 0.5",
                    ["metrics.m2 DESC"], 1000),
    "metric_param": ("a selective metric + param filter, page of 100", "metrics.m3 > 0.9 and params.model = 'b'",
                     ["metrics.m4"], 100),
    "plain": ("no filter, default order, page of 100", "", [], 100),
}
MILLION = 1_000_000
"""Spans of the ``--million`` memory run (1,000-span batches built on the fly)."""
MAX_LOG_BATCH = 1000
"""Largest log_batch variant: MLflow's (and the store's) limit of metrics per call."""
OPT_IN: tuple[Spec, ...] = (OTLP_INGEST, soak_spec())
"""Workloads run only when ``--workload`` names them (not in the default set): they
start server processes (``asyncstore serve``, ``mlflow server``); ``otlp_soak`` runs
for minutes."""


def _in_calls_of(size: int, rows: Callable[[Scale], int], scale: Scale) -> int:
    """Rows per repetition of a batch-size variant: the default workload's, in whole calls of ``size``."""
    return max(1, rows(scale) // size) * size


def variants(
    specs: Sequence[Spec],
    *,
    batch_sizes: Sequence[int] = (),
    job_workers: Sequence[int] = (),
    million: int = 0,
    search_runs: int = 0,
    otlp_minutes: float = 0,
) -> list[Spec]:
    """``specs`` with the workloads of the command's extra options.

    Args:
        specs: the chosen workloads.
        batch_sizes: rows per call of the ``log_batch`` / ``log_spans`` workloads,
            instead of 1,000 (``log_spans@100``; 1,000 is the plain one): the same rows
            per repetition, in calls of this size; sizes above 1,000 only for ``log_spans``.
        job_workers: concurrent workers of the ``claim_jobs`` workloads, instead of 8
            (``claim_jobs@1``; 8 is the plain one), each beside the naive claim loop.
        million: spans of a ``million_spans`` memory run (0: none).
        search_runs: runs of a ``search_scale`` workload (0: none).
        otlp_minutes: duration of the ``otlp_soak`` workload, which it adds when
            ``specs`` lack it (0: the default duration, and only if chosen).
    """
    found: list[Spec] = []
    for spec in specs:
        if spec.name in ("log_batch", "log_spans") and batch_sizes:
            for size in batch_sizes:
                if size == METRIC_BATCH:
                    found.append(spec)
                elif spec.name == "log_spans" or size <= MAX_LOG_BATCH:
                    found.append(dataclasses.replace(
                        spec, name=f"{spec.name}@{size}", family=spec.name, batch=size, mlflow=False,
                        size=functools.partial(_in_calls_of, size, spec.size),
                        description=spec.description.replace(f"{METRIC_BATCH}", f"{size:,}", 1).replace(
                            "100 keys x 10 steps", f"100 keys x {-(-size // 100)} steps"),
                    ))
        elif spec.name == "claim_jobs" and job_workers:
            for workers in job_workers:
                plain = workers == JOB_WORKERS
                found.append(dataclasses.replace(
                    spec, naive=True, mlflow=spec.mlflow and plain, concurrency=workers,
                    name=spec.name if plain else f"claim_jobs@{workers}", family="" if plain else "claim_jobs",
                    description=spec.description.replace(f"concurrency {JOB_WORKERS}", f"concurrency {workers}")
                    + " (naive: SELECT the oldest, then UPDATE it if still pending; lost claims counted)",
                ))
        elif spec.name == "otlp_soak":
            found.append(soak_spec(otlp_minutes or SOAK_MINUTES))
        else:
            found.append(spec)
    if otlp_minutes and not any(spec.name == "otlp_soak" for spec in found):
        found.append(soak_spec(otlp_minutes))
    if million:
        found.append(Spec(
            "million_spans", "spans/s", f"ingest {million:,} spans in {SPAN_BATCH}-span batches built on the fly, "
            "once, no warm-up; resident memory (MB) at 10%, at the end, the largest sampled and the peak",
            1, lambda s: million // SPAN_BATCH * SPAN_BATCH, once=True, mlflow=False,
        ))
    for label, (what, *_) in SCALE_QUERIES.items() if search_runs else ():
        found.append(Spec(
            f"search_scale/{label}", "searches/s", f"search_runs over {search_runs:,} runs x {SCALE_METRICS} "
            f"metrics (filled in bulk once): {what}; one caller", 1, _scale_searches,
            raw=True, mlflow=False, runs=search_runs, family="search_scale",
        ))
    return found


def _scale_searches(scale: Scale) -> int:
    """Calls per repetition of a --search-scale workload."""
    return max(4, scale.run_searches // 2)


class SearchScale(_ReadWorkload):
    """``--search-scale``: one query of :data:`SCALE_QUERIES` over 10,000 runs x 20 metrics.

    The runs are filled once per store and run count and shared by the queries' workloads.
    """

    latency = True
    filled: ClassVar[weakref.WeakKeyDictionary[AsyncStore, dict[int, str]]] = weakref.WeakKeyDictionary()
    """Per store, per run count, the experiment holding the runs."""

    async def setup(self) -> None:
        """The experiment and its runs (filled by the first of the queries), the call."""
        experiments = self.filled.setdefault(self.store, {})
        if self.spec.runs not in experiments:
            await _StoreWorkload.setup(self)
            await self.fill()
            experiments[self.spec.runs] = self.experiment_id
        self.experiment_id = experiments[self.spec.runs]
        self.distinct = self.calls()

    async def fill(self) -> None:
        """The runs, as log_batch would write them, inserted in bulk (the API would take minutes)."""
        rng = random.Random(SCALE_RUNS)
        experiment = int(self.experiment_id)
        for start in range(0, self.spec.runs, 500):
            runs, tags, params, metrics = [], [], [], []
            for n in range(start, min(start + 500, self.spec.runs)):
                run_id = hex_id(experiment, n, length=32)
                runs.append({
                    "run_uuid": run_id, "name": f"run-{n}", "experiment_id": experiment, "user_id": "bench",
                    "status": "FINISHED", "start_time": rng.randrange(10**9), "lifecycle_stage": "active",
                    "source_type": "UNKNOWN", "source_name": "", "entry_point_name": "", "source_version": "",
                })
                tags.append({"run_uuid": run_id, "key": "mlflow.runName", "value": f"run-{n}"})
                params += [{"run_uuid": run_id, "key": "model", "value": rng.choice("abc")},
                           {"run_uuid": run_id, "key": "lr", "value": rng.choice(["0.1", "0.01"])}]
                metrics += [{"run_uuid": run_id, "key": f"m{k}", "value": rng.random(), "timestamp": 1, "step": 0,
                             "is_nan": False} for k in range(SCALE_METRICS)]
            async with self.store.uow.transaction() as conn:
                await conn.execute(insert(schema.runs), runs)
                await conn.execute(insert(schema.tags), tags)
                await conn.execute(insert(schema.params), params)
                await conn.execute(insert(schema.metrics), metrics)
                await conn.execute(insert(schema.latest_metrics), metrics)
        await analyze(self.store)

    def calls(self) -> list[Callable[[], Awaitable[Any]]]:
        """This workload's query."""
        _, filter_string, order_by, page = SCALE_QUERIES[self.spec.name.split("/", 1)[1]]
        return [_search_runs(self.store, self.experiment_id, filter_string, order_by, page)]


async def analyze(store: AsyncStore) -> None:
    """PostgreSQL: refresh the planner's statistics after a bulk fill, as autovacuum soon would.

    Right after a bulk fill the planner believes the tables are nearly empty and
    picks nested loops that cost seconds instead of milliseconds.
    """
    if store.backend is not Backend.POSTGRESQL:
        return
    async with store.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("runs", "latest_metrics", "metrics", "params", "tags"):
            await conn.exec_driver_sql(f"ANALYZE {table}")


def rss_mb() -> float:
    """This process's resident memory now, in MB (Linux; elsewhere its peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MillionSpans(_StoreWorkload):
    """``--million``: ingest many spans in 1,000-span batches built on the fly; sample memory."""

    async def run(self, rep: int) -> Outcome:
        """Ingest; resident memory must stay flat (batches are not kept)."""
        salt = f"million-{self.experiment_id}"
        batches = self.spec.size(self.scale) // SPAN_BATCH
        samples: list[float] = []
        at_10 = 0.0
        for b in range(batches):
            await self.store.spans.log_spans(self.experiment_id, to_spans(span_batch(salt, rep, b)))
            if b % 50 == 0 or b == batches - 1:
                samples.append(rss_mb())
            if b == batches // 10:
                at_10 = rss_mb()
        extra = {"rss_mb_at_10pct": at_10, "rss_mb_end": samples[-1], "rss_mb_max_sampled": max(samples),
                 "peak_rss_mb": peak_rss_mb()}
        return Outcome(batches * SPAN_BATCH, extra={k: round(v, 1) for k, v in extra.items()})


class NaiveClaimJobs(ClaimJobs):
    """The naive claim: SELECT the oldest pending job, then UPDATE it if still pending (two transactions).

    A claim whose UPDATE matched no row was lost to another worker between the two
    statements; those are counted (``lost_claims``): the race ``claim`` avoids.
    """

    counters = ("empty_claims", "lost_claims")

    async def claim(self) -> str | None:
        """SELECT, then a conditional UPDATE."""
        oldest = (
            select(schema.jobs.c.id)
            .where(schema.jobs.c.job_name == self.job_name, schema.jobs.c.status == int(JobStatus.PENDING))
            .order_by(schema.jobs.c.creation_time, schema.jobs.c.id)
            .limit(1)
        )

        async def pick(conn: AsyncConnection) -> str | None:
            return (await conn.execute(oldest)).scalar()

        job_id = await self.store.uow.run(pick, write=False)
        if job_id is None:
            return None
        take = (
            update(schema.jobs)
            .where(schema.jobs.c.id == job_id, schema.jobs.c.status == int(JobStatus.PENDING))
            .values(status=int(JobStatus.RUNNING), last_update_time=int(time.time() * 1000))
        )

        async def claim(conn: AsyncConnection) -> int:
            return int((await conn.execute(take)).rowcount)

        if await self.store.uow.run(claim) == 0:
            self.counts["lost_claims"] += 1
            return None
        return str(job_id)


EXTRA_WORKLOADS: dict[str, type[_StoreWorkload]] = {
    "million_spans": MillionSpans, "search_scale": SearchScale, "otlp_ingest": OtlpIngest,
}
NAIVE_WORKLOADS: dict[str, type[ClaimJobs]] = {"claim_jobs": NaiveClaimJobs}
"""The naive loop measured beside a workload (the ``naive`` system)."""


def workload_class(kind: str) -> type[_StoreWorkload]:
    """asyncstore's workload class of a workload family (``Spec.kind``)."""
    return STORE_WORKLOADS.get(kind) or EXTRA_WORKLOADS[kind]
