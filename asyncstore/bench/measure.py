"""Timing: warm-up, repetitions, medians and latency percentiles.

A :class:`Workload` is one system (asyncstore, MLflow or a raw driver) doing one
benchmark: an untimed ``setup``, then per repetition an untimed ``prepare`` and a
timed ``run`` that returns how many items it did (and, for latency workloads,
each call's latency). :func:`measure` runs the warm-up repetitions, then the
recorded ones, and reports the median throughput.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol


@dataclasses.dataclass
class Outcome:
    """What one timed repetition did.

    Attributes:
        items: units of work done (runs, metrics, calls, spans, searches, jobs).
        latencies: seconds per call, for workloads that report p50/p99.
        extra: counters worth reporting (e.g. claims lost to races).
    """

    items: int
    latencies: list[float] | None = None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


class Workload(Protocol):
    """One system doing one benchmark (see the module docstring)."""

    async def setup(self) -> None:
        """Create what every repetition needs (untimed)."""

    async def prepare(self, rep: int) -> None:
        """Create what repetition ``rep`` consumes (untimed)."""

    async def run(self, rep: int) -> Outcome:
        """Do repetition ``rep``: the timed part."""

    async def teardown(self) -> None:
        """Release what ``setup`` took (connections, thread pools)."""


@dataclasses.dataclass
class Figures:
    """The result of :func:`measure`: median and per-repetition figures.

    Attributes:
        throughput: median items per second over the recorded repetitions.
        throughputs: items per second of each recorded repetition.
        seconds: wall-clock seconds of each recorded repetition.
        items: items per repetition (of the last one).
        p50_ms, p99_ms: median over repetitions of each repetition's latency
            percentiles, in milliseconds (latency workloads only).
        extra: per-counter sums over the recorded repetitions.
        setup_seconds: how long the untimed setup took (filling the database).
    """

    throughput: float
    throughputs: list[float]
    seconds: list[float]
    items: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    setup_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (no None values)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != {}}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest-rank method.

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside 0-100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0-100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def measure(
    workload: Workload,
    *,
    warmup: int,
    repetitions: int,
    on_repetition: Callable[[int, float | None], Awaitable[None] | None] | None = None,
) -> Figures:
    """Run ``workload``: setup, ``warmup`` unrecorded repetitions, then ``repetitions``.

    Args:
        workload: the system and benchmark to run.
        warmup: repetitions run first and discarded.
        repetitions: recorded repetitions (at least 1).
        on_repetition: called after each repetition with its index and its
            throughput (None for a warm-up one); used for progress display.

    Returns:
        The median throughput and the per-repetition figures.
    """
    if repetitions < 1:
        raise ValueError("repetitions must be at least 1")
    setup_started = time.perf_counter()
    await workload.setup()
    setup_seconds = time.perf_counter() - setup_started
    try:
        throughputs: list[float] = []
        seconds: list[float] = []
        p50s: list[float] = []
        p99s: list[float] = []
        extra: dict[str, float] = {}
        items = 0
        for rep in range(warmup + repetitions):
            await workload.prepare(rep)
            started = time.perf_counter()
            outcome = await workload.run(rep)
            elapsed = time.perf_counter() - started
            recorded = rep >= warmup
            rate = outcome.items / elapsed if elapsed > 0 else 0.0
            if recorded:
                throughputs.append(rate)
                seconds.append(elapsed)
                items = outcome.items
                if outcome.latencies:
                    p50s.append(percentile(outcome.latencies, 50) * 1000)
                    p99s.append(percentile(outcome.latencies, 99) * 1000)
                for key, value in outcome.extra.items():
                    extra[key] = extra.get(key, 0.0) + value
            if on_repetition is not None:
                result = on_repetition(rep, rate if recorded else None)
                if result is not None:
                    await result
    finally:
        await workload.teardown()
    return Figures(
        throughput=statistics.median(throughputs),
        throughputs=throughputs,
        seconds=seconds,
        items=items,
        p50_ms=statistics.median(p50s) if p50s else None,
        p99_ms=statistics.median(p99s) if p99s else None,
        extra=extra,
        setup_seconds=round(setup_seconds, 3),
    )


async def timed(call: Callable[[], Awaitable[Any]], latencies: list[float]) -> None:
    """Await ``call()`` and append its duration in seconds to ``latencies``."""
    started = time.perf_counter()
    await call()
    latencies.append(time.perf_counter() - started)


async def fan_out(count: int, concurrency: int, call: Callable[[int], Awaitable[Any]]) -> None:
    """Make ``count`` calls ``call(0) … call(count - 1)`` from ``concurrency`` tasks.

    Each task takes the next index as soon as its previous call is done (a closed
    loop, like a web server's workers). The first failure cancels the other tasks
    and is raised.
    """
    indexes = iter(range(count))

    async def worker() -> None:
        for index in indexes:  # one shared iterator: no index is taken twice
            await call(index)

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(concurrency, count)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
