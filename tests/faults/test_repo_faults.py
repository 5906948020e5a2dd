"""Sessions killed in the middle of log_batch, log_spans and job claims.

Each operation is first run once to count its SQL statements, then once per
statement boundary with the session killed right after that statement (the kill
after the last statement makes COMMIT fail). The promises, at every boundary: the
caller gets success (after a safe retry) or TEMPORARILY_UNAVAILABLE, the batch is
then fully there or fully absent, and the next call on the same store works.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import select

from asyncstore import AsyncStore, TemporarilyUnavailable
from asyncstore.entities import JobStatus, Metric, Param, RunTag, Span, SpanStatus
from asyncstore.schema import latest_metrics, metrics, params, spans, tags, trace_info
from tests.faults.conftest import SERVERS, count_rows
from tests.faults.killer import StatementKiller

KEYS, STEPS = 10, 20
T0_NS = 1_700_000_000_000_000_000


async def _kill_after(store: AsyncStore, at: int | None, op: Callable[[], Awaitable[object]]) -> tuple[str, int]:
    """Run ``op`` with the session killed after statement ``at``; ("ok" | "unavailable", statements)."""
    killer = StatementKiller(store.engine, store.config.uri, store.backend, at)
    with killer.armed():
        try:
            await op()
        except TemporarilyUnavailable:
            assert killer.killed
            return "unavailable", killer.seen
    assert at is None or killer.killed
    return "ok", killer.seen


def _batch() -> tuple[list[Metric], list[Param], list[RunTag]]:
    ms = [Metric(f"m{k}", float(k * 100 + s), 1_000 + s, s) for k in range(KEYS) for s in range(STEPS)]
    return ms, [Param(f"p{i}", f"v{i}") for i in range(20)], [RunTag(f"t{i}", f"w{i}") for i in range(20)]


async def _run_rows(store: AsyncStore, run_id: str) -> tuple[int, int, int, int]:
    where = lambda table: table.c.run_uuid == run_id  # noqa: E731
    return (
        await count_rows(store, metrics, where(metrics)),
        await count_rows(store, params, where(params)),
        await count_rows(store, tags, where(tags)),
        await count_rows(store, latest_metrics, where(latest_metrics)),
    )


@SERVERS
async def test_log_batch_killed_at_every_statement(store: AsyncStore) -> None:
    """Promise: log_batch (200 metrics, 20 params, 20 tags) whose session is killed after
    any one of its statements either succeeds with the whole batch stored once and the
    right latest metrics, or raises TEMPORARILY_UNAVAILABLE with none of it stored;
    sending the same batch again then stores it whole."""
    exp = await store.experiments.create("kill-log-batch")
    ms, ps, ts = _batch()
    probe = await store.runs.create(exp)
    _, statements = await _kill_after(store, None, lambda: store.runs.log_batch(probe.info.run_id, ms, ps, ts))
    assert statements >= 2
    outcomes = []
    for at in range(1, statements + 1):
        run_id = (await store.runs.create(exp)).info.run_id
        before = await _run_rows(store, run_id)  # create() sets a few tags of its own
        full = (KEYS * STEPS, len(ps), len(ts) + before[2], KEYS)
        outcome, _ = await _kill_after(store, at, lambda: store.runs.log_batch(run_id, ms, ps, ts))
        outcomes.append(outcome)
        assert await _run_rows(store, run_id) == (full if outcome == "ok" else before), (at, outcome)
        await store.runs.log_batch(run_id, ms, ps, ts)
        assert await _run_rows(store, run_id) == full
        run = await store.runs.get(run_id)
        assert run.data.metrics == {f"m{k}": float(k * 100 + STEPS - 1) for k in range(KEYS)}
    assert store.engine.sync_engine.pool.checkedout() == 0
    assert "ok" in outcomes  # kills before the last statement are retried


def _spans(tag: str) -> list[Span]:
    out = []
    for t in range(3):
        trace_id = "tr-" + uuid.uuid5(uuid.NAMESPACE_OID, f"{tag}-{t}").hex
        root = f"{t:02x}" * 8
        out.append(Span(trace_id, root, "root", T0_NS, T0_NS + 5_000_000_000, status=SpanStatus.OK))
        for c in range(1, 30):
            out.append(
                Span(trace_id, f"{c:016x}", f"child-{c}", T0_NS + c * 1_000_000, T0_NS + c * 2_000_000,
                     parent_span_id=root, attributes={"i": c, "text": "x" * 200})
            )
    return out


async def _trace_rows(store: AsyncStore, batch: list[Span]) -> tuple[int, int]:
    ids = sorted({s.trace_id for s in batch})
    return (
        await count_rows(store, trace_info, trace_info.c.request_id.in_(ids)),
        await count_rows(store, spans, spans.c.trace_id.in_(ids)),
    )


@SERVERS
async def test_log_spans_killed_at_every_statement(store: AsyncStore) -> None:
    """Promise: log_spans (3 traces, 90 spans) whose session is killed after any one of
    its statements either succeeds with every trace row and span stored once, or raises
    TEMPORARILY_UNAVAILABLE with no trace row and no span stored; sending the batch
    again then stores it whole, with each trace's time range from its spans."""
    exp = await store.experiments.create("kill-log-spans")
    _, statements = await _kill_after(store, None, lambda: store.spans.log_spans(exp, _spans("probe")))
    assert statements >= 2
    outcomes = []
    for at in range(1, statements + 1):
        batch = _spans(f"at-{at}")
        outcome, _ = await _kill_after(store, at, lambda: store.spans.log_spans(exp, batch))
        outcomes.append(outcome)
        assert await _trace_rows(store, batch) == ((3, 90) if outcome == "ok" else (0, 0)), (at, outcome)
        assert await store.spans.log_spans(exp, batch) == 90
        assert await _trace_rows(store, batch) == (3, 90)

        async def ranges(conn):  # type: ignore[no-untyped-def]
            rows = await conn.execute(
                select(trace_info.c.timestamp_ms, trace_info.c.execution_time_ms).where(
                    trace_info.c.request_id.in_({s.trace_id for s in batch})
                )
            )
            return {tuple(row) for row in rows}

        assert await store.uow.run(ranges, write=False) == {(T0_NS // 1_000_000, 5_000)}
    assert store.engine.sync_engine.pool.checkedout() == 0
    assert "ok" in outcomes


@SERVERS
async def test_job_claim_killed_at_every_statement(store: AsyncStore) -> None:
    """Promise: a claim whose session is killed after any one of its statements either
    returns the claimed jobs, and exactly those are RUNNING in the database, or raises
    TEMPORARILY_UNAVAILABLE with every job still PENDING; no job is ever handed out
    twice, and the next claim takes what is left."""
    probe = await store.jobs.create("probe", {})
    _, statements = await _kill_after(store, None, lambda: store.jobs.claim(["probe"], limit=1))
    assert statements >= 1 and (await store.jobs.get(probe.job_id)).status is JobStatus.RUNNING
    handed_out: list[str] = []
    outcomes = []
    for at in range(1, statements + 1):
        name = f"claim-{at}"
        created = {(await store.jobs.create(name, {"i": i})).job_id for i in range(6)}
        claimed: list[str] = []

        async def claim(name: str = name) -> None:
            claimed.extend(job.job_id for job in await store.jobs.claim([name], limit=4))

        outcome, _ = await _kill_after(store, at, claim)
        outcomes.append(outcome)

        async def by_status(conn, name: str = name):  # type: ignore[no-untyped-def]
            from asyncstore.schema import jobs

            rows = await conn.execute(select(jobs.c.id, jobs.c.status).where(jobs.c.job_name == name))
            return {row.id: JobStatus(row.status) for row in rows}

        states = await store.uow.run(by_status, write=False)
        running = {j for j, s in states.items() if s is JobStatus.RUNNING}
        if outcome == "ok":
            assert len(claimed) == 4 and set(claimed) == running, at
        else:
            assert claimed == [] and running == set(), at
        handed_out += claimed
        rest = await store.jobs.claim([name], limit=10)
        handed_out += [job.job_id for job in rest]
        assert set(claimed) | {job.job_id for job in rest} == created
        after = await store.uow.run(by_status, write=False)
        assert set(after.values()) == {JobStatus.RUNNING}
    assert len(handed_out) == len(set(handed_out))  # nothing handed out twice
    assert "ok" in outcomes or statements == 1
    counts = await store.jobs.count_by_status()
    assert counts.get(JobStatus.PENDING, 0) == 0
