"""Deadlock pressure: many tasks logging to the same runs and the same traces at once."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import select

from asyncstore import AsyncStore
from asyncstore.entities import Metric, Span, SpanStatus
from asyncstore.schema import spans, trace_info
from tests.helpers import MS, T0, count_rows, transaction_retries

TASKS, ROUNDS, KEYS = 24, 4, 25
TRACES = [f"tr-{i:032x}" for i in range(1, 5)]
T0_MS = T0 // MS  # span times are whole milliseconds
HANG_GUARD = 180  # seconds: only there so that a hang fails the test instead of CI


@pytest.mark.slow
async def test_concurrent_log_batch_and_log_spans_on_overlapping_rows(migrated_uri: str) -> None:
    """Promise: 24 tasks, each logging 4 rounds of 25-metric batches (same keys, shuffled
    order) to the same two runs and 4 rounds of span batches touching the same four
    traces (shuffled order, some span ids re-sent by several tasks), all at once: no
    call fails (no deadlock or lock timeout reaches a caller), every run's latest
    metrics are the greatest (step, timestamp, value) logged per key, every span is
    stored once, and every trace's time range covers exactly its spans. And no retry
    was needed: the fixed lock order keeps deadlocks from happening at all, rather
    than the unit of work's retry hiding them."""
    rng = random.Random(424242)
    async with AsyncStore.open(migrated_uri, pool_size=10, max_overflow=20) as store:
        exp = await store.experiments.create("deadlocks")
        run_ids = [(await store.runs.create(exp)).info.run_id for _ in range(2)]
        plans = []
        for t in range(TASKS):
            rounds = []
            for r in range(ROUNDS):
                keys = list(range(KEYS))
                rng.shuffle(keys)
                batch = [Metric(f"k{k}", float(rng.randint(-1000, 1000)), T0_MS + rng.randint(0, 50), rng.randint(0, 30)) for k in keys]
                traces = TRACES[:]
                rng.shuffle(traces)
                span_batch = []
                for trace_id in traces:
                    start = T0_MS + rng.randint(0, 10_000)
                    end = start + rng.randint(1, 5_000)
                    span_id = f"{0:08x}{r:08x}" if rng.random() < 0.3 else f"{t + 1:08x}{r:08x}"  # shared ids re-sent
                    span_batch.append(Span(trace_id, span_id, f"s{t}-{r}", start * MS, end * MS, status=SpanStatus.OK,
                                           parent_span_id="f" * 16))
                rounds.append((rng.choice(run_ids), batch, span_batch))
            plans.append(rounds)

        async def worker(rounds: list) -> None:  # type: ignore[type-arg]
            for run_id, batch, span_batch in rounds:
                await asyncio.gather(store.runs.log_batch(run_id, metrics=batch), store.spans.log_spans(exp, span_batch))

        with transaction_retries() as retried:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(worker(p) for p in plans), return_exceptions=True), HANG_GUARD
            )
        assert [o for o in outcomes if o is not None] == []
        assert [r.getMessage() for r in retried] == []  # the README's "no retry was needed"

        for run_id in run_ids:
            logged = [m for p in plans for rid, batch, _ in p if rid == run_id for m in batch]
            best: dict[str, Metric] = {}
            for m in logged:
                if m.key not in best or (m.step, m.timestamp, m.value) > (best[m.key].step, best[m.key].timestamp, best[m.key].value):
                    best[m.key] = m
            data = (await store.runs.get(run_id)).data
            assert data.metrics == {k: m.value for k, m in best.items()}

        sent = [s for p in plans for _, _, span_batch in p for s in span_batch]
        assert await count_rows(store, spans) == len({(s.trace_id, s.span_id) for s in sent})
        expected_ranges = {}
        for trace_id in TRACES:
            mine = [s for s in sent if s.trace_id == trace_id]
            # A re-sent span overwrites the stored one, but the trace range only widens.
            first = min(s.start_time_unix_nano for s in mine) // MS
            last = max(s.end_time_unix_nano for s in mine) // MS
            expected_ranges[trace_id] = (first, last - first)

        async def ranges(conn):  # type: ignore[no-untyped-def]
            rows = await conn.execute(select(trace_info.c.request_id, trace_info.c.timestamp_ms, trace_info.c.execution_time_ms))
            return {row[0]: (row[1], row[2]) for row in rows}

        assert await store.uow.run(ranges, write=False) == expected_ranges


async def test_retry_counter_sees_every_retry(store: AsyncStore) -> None:
    """The counter behind "no retry was needed" above: a transaction whose first attempt
    meets a transient failure (here a connection reset) is run again, and
    :func:`~tests.helpers.transaction_retries` sees exactly that one retry."""
    attempts = 0

    async def flaky(conn: object) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionResetError("connection reset by peer")

    with transaction_retries() as retried:
        await store.uow.run(flaky)
    assert attempts == 2 and len(retried) == 1
