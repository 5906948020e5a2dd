"""Benchmark scales: how much work each workload does per repetition.

``small`` is what CI runs (well under a minute on SQLite on a 2-core machine);
``medium`` is the size the README's figures come from; ``large`` is for a quiet
machine and a patient person. The per-workload sizes are the units the workload
counts (runs, 1,000-row batches, calls, searches, jobs).
"""

from __future__ import annotations

import dataclasses

METRIC_BATCH = 1000
"""Metrics per ``log_batch`` call: MLflow's maximum per batch."""
SPAN_BATCH = 1000
"""Spans per ingestion call: the batch size trace exporters typically flush."""
SPANS_PER_TRACE = 20
"""Spans per trace in the span-ingestion workload (a small agent run)."""
GET_RUN_CONCURRENCY = 32
"""Concurrent callers of ``get_run`` (a busy web app's in-flight requests)."""
JOB_WORKERS = 8
"""Concurrent job workers claiming and finishing jobs."""
WRITE_CONCURRENCY = 8
"""Concurrent callers creating runs (several clients starting runs at once)."""
SEARCH_CONCURRENCY = 4
"""Concurrent callers of run and trace search (dashboards refreshing)."""
MIXED_CONCURRENCY = 64
"""Concurrent callers of the ``mixed`` workload (a busy web app's in-flight requests)."""
MIXED_METRICS = 100
"""Metrics per ``log_batch`` call of the ``mixed`` workload (a training step's report)."""
MIXED_WRITE_EVERY = 5
"""One call in this many is a write in the ``mixed`` workload (reads to writes 4:1)."""


@dataclasses.dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark scale.

    Attributes:
        name: ``small``, ``medium`` or ``large``.
        warmup: repetitions run first and not recorded (caches, pools, JIT of plans).
        repetitions: recorded repetitions; the median is reported.
        runs_created: runs created per repetition (one experiment each).
        metric_batches: 1,000-metric ``log_batch`` calls per repetition.
        get_run_calls: ``get_run`` calls per repetition.
        get_run_pool: distinct runs the ``get_run`` calls read.
        searched_runs: runs in the experiment that run search scans.
        run_searches: run-search calls per repetition.
        span_batches: 1,000-span ingestion calls per repetition.
        searched_traces: traces in the experiment that trace search scans.
        trace_searches: trace-search calls per repetition.
        jobs: jobs claimed and finished per repetition.
        mixed_calls: calls (reads and writes) of the ``mixed`` workload per repetition.
    """

    name: str
    warmup: int
    repetitions: int
    runs_created: int
    metric_batches: int
    get_run_calls: int
    get_run_pool: int
    searched_runs: int
    run_searches: int
    span_batches: int
    searched_traces: int
    trace_searches: int
    jobs: int
    mixed_calls: int


SCALES: dict[str, Scale] = {
    "small": Scale(
        name="small", warmup=1, repetitions=3, runs_created=50, metric_batches=4,
        get_run_calls=320, get_run_pool=50, searched_runs=1000, run_searches=8,
        span_batches=4, searched_traces=500, trace_searches=8, jobs=160, mixed_calls=640,
    ),
    "medium": Scale(
        name="medium", warmup=1, repetitions=5, runs_created=300, metric_batches=20,
        get_run_calls=3200, get_run_pool=200, searched_runs=1000, run_searches=40,
        span_batches=20, searched_traces=2000, trace_searches=40, jobs=1000, mixed_calls=3200,
    ),
    "large": Scale(
        name="large", warmup=1, repetitions=5, runs_created=2000, metric_batches=100,
        get_run_calls=20000, get_run_pool=1000, searched_runs=10000, run_searches=100,
        span_batches=100, searched_traces=10000, trace_searches=100, jobs=10000, mixed_calls=20000,
    ),
}
