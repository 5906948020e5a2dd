"""Timing: warm-up, repetitions, medians and latency percentiles.

A :class:`Workload` is one system (asyncstore, MLflow or a raw driver) doing one
benchmark: an untimed ``setup``, then per repetition an untimed ``prepare`` and a
timed ``run`` that returns how many items it did (and, for latency workloads,
each call's latency). :func:`measure_all` runs the warm-up repetitions, then the
recorded ones, of several systems interleaved, and reports each one's median
throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol


@dataclasses.dataclass
class Part:
    """One kind of call in a repetition that mixes kinds (the ``mixed`` workload's reads and writes).

    Attributes:
        calls: calls of this kind made.
        seconds: wall-clock seconds of the phase they were made in (shared by the
            kinds of one phase).
        latencies: seconds per call.
    """

    calls: int
    seconds: float
    latencies: list[float]


@dataclasses.dataclass
class Outcome:
    """What one timed repetition did.

    Attributes:
        items: units of work done (runs, metrics, calls, spans, searches, jobs).
        latencies: seconds per call, for workloads that report p50/p99.
        extra: counters worth reporting (e.g. claims lost to races).
        parts: per kind of call, its own throughput and latencies (reported beside
            the totals).
        seconds: the seconds ``items`` took when the repetition also did something
            else (the ``mixed`` workload's read-only phase); None: the whole repetition.
        samples: readings taken along the repetition (the OTLP workloads' server
            memory and throughput), reported as they are.
    """

    items: int
    latencies: list[float] | None = None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    parts: dict[str, Part] = dataclasses.field(default_factory=dict)
    seconds: float | None = None
    samples: list[dict[str, float]] = dataclasses.field(default_factory=list)


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
        parts: per kind of call (:class:`Part`), the median over repetitions of its
            ``throughput`` (calls per second), ``p50_ms`` and ``p99_ms``.
        setup_seconds: how long the untimed setup took (filling the database).
        samples: the readings of the recorded repetitions (:attr:`Outcome.samples`).
    """

    throughput: float
    throughputs: list[float]
    seconds: list[float]
    items: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    parts: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    setup_seconds: float | None = None
    samples: list[dict[str, float]] | None = None

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


@dataclasses.dataclass
class _Tally:
    """Figures of one system, collected repetition by repetition."""

    setup_seconds: float = 0.0
    throughputs: list[float] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)
    p50s: list[float] = dataclasses.field(default_factory=list)
    p99s: list[float] = dataclasses.field(default_factory=list)
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    parts: dict[str, dict[str, list[float]]] = dataclasses.field(default_factory=dict)
    samples: list[dict[str, float]] = dataclasses.field(default_factory=list)
    items: int = 0

    def add(self, outcome: Outcome, elapsed: float) -> float:
        if outcome.seconds is not None:
            elapsed = outcome.seconds
        rate = outcome.items / elapsed if elapsed > 0 else 0.0
        self.throughputs.append(rate)
        self.seconds.append(elapsed)
        self.items = outcome.items
        if outcome.latencies:
            self.p50s.append(percentile(outcome.latencies, 50) * 1000)
            self.p99s.append(percentile(outcome.latencies, 99) * 1000)
        for key, value in outcome.extra.items():
            self.extra[key] = self.extra.get(key, 0.0) + value
        self.samples += outcome.samples
        for name, part in outcome.parts.items():
            tally = self.parts.setdefault(name, {"throughput": [], "p50_ms": [], "p99_ms": []})
            tally["throughput"].append(part.calls / part.seconds if part.seconds > 0 else 0.0)
            tally["p50_ms"].append(percentile(part.latencies, 50) * 1000)
            tally["p99_ms"].append(percentile(part.latencies, 99) * 1000)
        return rate

    def figures(self) -> Figures:
        return Figures(
            throughput=statistics.median(self.throughputs),
            throughputs=self.throughputs,
            seconds=self.seconds,
            items=self.items,
            p50_ms=statistics.median(self.p50s) if self.p50s else None,
            p99_ms=statistics.median(self.p99s) if self.p99s else None,
            extra=self.extra,
            parts={
                name: {figure: statistics.median(values) for figure, values in tally.items()}
                for name, tally in self.parts.items()
            },
            setup_seconds=round(self.setup_seconds, 3),
            samples=self.samples or None,
        )


RepetitionHook = Callable[[str, int, "float | None"], None]
"""Called after each repetition with the system, the index and the throughput (None in warm-up)."""
FailureHook = Callable[[str, Exception], None]
"""Called when a system's workload raises; the other systems go on."""


async def measure_all(
    workloads: Mapping[str, Workload],
    *,
    warmup: int,
    repetitions: int,
    on_repetition: RepetitionHook | None = None,
    on_failure: FailureHook | None = None,
) -> dict[str, Figures | Exception]:
    """Measure several systems on one benchmark, their repetitions interleaved.

    Every system is set up first; then repetition 0 of each system, repetition 1 of
    each, and so on, so that a change of machine load during the run (another
    process, the disk cache, autovacuum) hits every system alike instead of
    favouring the one measured last. The first ``warmup`` repetitions are not
    recorded. A system whose workload raises is torn down and reported as its
    exception; the others go on.

    Returns:
        Per system, its :class:`Figures` (median throughput and per-repetition
        figures) or the exception that stopped it.
    """
    if repetitions < 1:
        raise ValueError("repetitions must be at least 1")
    results: dict[str, Figures | Exception] = {}
    tallies = {name: _Tally() for name in workloads}
    active: dict[str, Workload] = {}

    async def fail(name: str, workload: Workload, exc: Exception) -> None:
        results[name] = exc
        active.pop(name, None)
        with contextlib.suppress(Exception):
            await workload.teardown()
        if on_failure is not None:
            on_failure(name, exc)

    try:
        for name, workload in workloads.items():
            started = time.perf_counter()
            try:
                await workload.setup()
            except Exception as exc:
                await fail(name, workload, exc)
                continue
            tallies[name].setup_seconds = time.perf_counter() - started
            active[name] = workload
        for rep in range(warmup + repetitions):
            for name, workload in list(active.items()):
                try:
                    await workload.prepare(rep)
                    started = time.perf_counter()
                    outcome = await workload.run(rep)
                    elapsed = time.perf_counter() - started
                except Exception as exc:
                    await fail(name, workload, exc)
                    continue
                rate = tallies[name].add(outcome, elapsed) if rep >= warmup else None
                if on_repetition is not None:
                    on_repetition(name, rep, rate)
    finally:
        for workload in active.values():
            await workload.teardown()
    for name in active:
        results[name] = tallies[name].figures()
    return {name: results[name] for name in workloads}


async def measure(workload: Workload, *, warmup: int, repetitions: int) -> Figures:
    """Measure one system (see :func:`measure_all`); its exception, if any, is raised."""
    result = (await measure_all({"system": workload}, warmup=warmup, repetitions=repetitions))["system"]
    if isinstance(result, Exception):
        raise result
    return result


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


async def mixed_load(
    read: Callable[[int], Awaitable[Any]],
    write: Callable[[int], Awaitable[Any]],
    *,
    calls: int,
    concurrency: int,
    write_every: int,
) -> Outcome:
    """The ``mixed`` workload's repetition, for any system: reads alone, then reads and writes.

    First ``concurrency`` callers make only reads (as many as the mixed phase will
    make); then the same callers make ``calls`` calls of which every
    ``write_every``-th is a write. The outcome's items and seconds are the mixed
    phase's; its parts are ``reads`` and ``writes`` of the mixed phase and
    ``reads_alone`` of the first.
    """
    reads_alone: list[float] = []
    reads: list[float] = []
    writes: list[float] = []
    read_calls = calls - calls // write_every

    async def alone(i: int) -> None:
        await timed(lambda: read(i), reads_alone)

    async def mixed(i: int) -> None:
        if i % write_every == write_every - 1:
            await timed(lambda: write(i), writes)
        else:
            await timed(lambda: read(i), reads)

    started = time.perf_counter()
    await fan_out(read_calls, concurrency, alone)
    alone_seconds = time.perf_counter() - started
    started = time.perf_counter()
    await fan_out(calls, concurrency, mixed)
    seconds = time.perf_counter() - started
    return Outcome(
        calls,
        latencies=reads + writes,
        seconds=seconds,
        parts={
            "reads": Part(len(reads), seconds, reads),
            "writes": Part(len(writes), seconds, writes),
            "reads_alone": Part(len(reads_alone), alone_seconds, reads_alone),
        },
    )
