"""Sessions killed in the middle of log_batch, log_spans and job claims.

Each operation is first run once to count its SQL statements, then once per
statement boundary with the session killed right after that statement (the kill
after the last statement makes COMMIT fail). The promises, at every boundary: the
caller gets success (after a safe retry) or TEMPORARILY_UNAVAILABLE, the batch is
then fully there or fully absent, and the next call on the same store works.

On PostgreSQL a span batch of ``BULK_MIN`` spans or more is written with COPY
under a savepoint, straight through the driver, and on MySQL/MariaDB one of
``BULK_MIN`` or more with LOAD DATA LOCAL INFILE: those statements are killed
too, after each of them and in the middle of the COPY or LOAD DATA itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import select

from asyncstore import AsyncStore, TemporarilyUnavailable
from asyncstore.bulk import BULK_MIN, savepoint_name
from asyncstore.entities import JobStatus, Metric, Param, RunTag, Span, SpanStatus
from asyncstore.schema import latest_metrics, metrics, params, spans, tags, trace_info
from tests.faults.killer import MidStatementKiller, StatementKiller
from tests.helpers import count_rows, needs_server

KEYS, STEPS = 10, 20
T0_NS = 1_700_000_000_000_000_000
bulk_path = pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
"""The backends whose large span batches take the driver's bulk path under a savepoint:
PostgreSQL's COPY, MySQL/MariaDB's LOAD DATA LOCAL INFILE."""


def bulk_steps(backend: str, table: str) -> list[str]:
    """The statements of the bulk path into ``table``, in order (what the killer sees)."""
    load = {"postgresql": f"COPY {table} (", "mysql": "LOAD DATA LOCAL INFILE"}[backend]
    return [f"SAVEPOINT {savepoint_name(table)}", load, f"RELEASE SAVEPOINT {savepoint_name(table)}"]


BULK_SERVER = {"postgresql": ("COPY spans", "COPY"), "mysql": ("LOAD DATA", "LOAD DATA")}
"""Per backend, the bulk statement as the client sends it and as the server shows it running."""


async def _kill_after(
    store: AsyncStore, at: int | None, op: Callable[[], Awaitable[object]]
) -> tuple[str, int, list[str]]:
    """Run ``op`` with the session killed after statement ``at``; ("ok" | "unavailable", count, statements)."""
    killer = StatementKiller(store.engine, store.config.uri, store.backend, at)
    with killer.armed():
        try:
            await op()
        except TemporarilyUnavailable:
            assert killer.killed
            return "unavailable", killer.seen, killer.statements
    assert at is None or killer.killed
    return "ok", killer.seen, killer.statements


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


@needs_server
async def test_log_batch_killed_at_every_statement(store: AsyncStore) -> None:
    """Promise: log_batch (200 metrics, 20 params, 20 tags) whose session is killed after
    any one of its statements, those of the metrics' bulk path included (SAVEPOINT, COPY
    or LOAD DATA, RELEASE), either succeeds with the whole batch stored once and the
    right latest metrics, or raises TEMPORARILY_UNAVAILABLE with none of it stored;
    sending the same batch again (which the bulk path gives way to) then stores it whole."""
    exp = await store.experiments.create("kill-log-batch")
    ms, ps, ts = _batch()
    assert len(ms) >= BULK_MIN
    probe = await store.runs.create(exp)
    _, statements, sent = await _kill_after(store, None, lambda: store.runs.log_batch(probe.info.run_id, ms, ps, ts))
    steps = bulk_steps(store.backend, "metrics")  # the bulk path, once, in this order
    loaded = [s for s in sent if s.startswith(tuple(steps))]
    assert len(loaded) == len(steps) and all(s.startswith(step) for s, step in zip(loaded, steps)), sent
    assert statements >= 2
    outcomes = []
    for at in range(1, statements + 1):
        run_id = (await store.runs.create(exp)).info.run_id
        before = await _run_rows(store, run_id)  # create() sets a few tags of its own
        full = (KEYS * STEPS, len(ps), len(ts) + before[2], KEYS)
        outcome, _, _ = await _kill_after(store, at, lambda: store.runs.log_batch(run_id, ms, ps, ts))
        outcomes.append(outcome)
        assert await _run_rows(store, run_id) == (full if outcome == "ok" else before), (at, outcome)
        await store.runs.log_batch(run_id, ms, ps, ts)
        assert await _run_rows(store, run_id) == full
        run = await store.runs.get(run_id)
        assert run.data.metrics == {f"m{k}": float(k * 100 + STEPS - 1) for k in range(KEYS)}
    assert store.engine.sync_engine.pool.checkedout() == 0
    assert "ok" in outcomes  # kills before the last statement are retried


def _spans(tag: str, traces: int = 3, per_trace: int = 30) -> list[Span]:
    """``traces`` traces of ``per_trace`` spans each (a root and its children), 5 s long."""
    out = []
    for t in range(traces):
        trace_id = "tr-" + uuid.uuid5(uuid.NAMESPACE_OID, f"{tag}-{t}").hex
        root = f"{t:02x}" * 8
        out.append(Span(trace_id, root, "root", T0_NS, T0_NS + 5_000_000_000, status=SpanStatus.OK))
        for c in range(1, per_trace):
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


@needs_server
async def test_log_spans_killed_at_every_statement(store: AsyncStore) -> None:
    """Promise: log_spans (3 traces, 90 spans) whose session is killed after any one of
    its statements either succeeds with every trace row and span stored once, or raises
    TEMPORARILY_UNAVAILABLE with no trace row and no span stored; sending the batch
    again then stores it whole, with each trace's time range from its spans."""
    exp = await store.experiments.create("kill-log-spans")
    _, statements, _ = await _kill_after(store, None, lambda: store.spans.log_spans(exp, _spans("probe")))
    assert statements >= 2
    outcomes = []
    for at in range(1, statements + 1):
        batch = _spans(f"at-{at}")
        outcome, _, _ = await _kill_after(store, at, lambda: store.spans.log_spans(exp, batch))
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


@bulk_path
async def test_log_spans_copy_batch_killed_at_every_statement(store: AsyncStore, backend: str) -> None:
    """Promise: a log_spans batch large enough for the bulk path (COPY, LOAD DATA; 4
    traces, 160 spans) whose session is killed after any one of its statements, the
    SAVEPOINT, the bulk statement and the RELEASE included, either succeeds with every
    trace row and span stored once, or raises TEMPORARILY_UNAVAILABLE with nothing
    stored (always so without retries); the next call on the same store then stores
    the batch whole."""
    traces, per_trace = 4, 40
    total = traces * per_trace
    assert total >= BULK_MIN
    exp = await store.experiments.create("kill-copy")
    _, count, probe = await _kill_after(
        store, None, lambda: store.spans.log_spans(exp, _spans("copy-probe", traces, per_trace))
    )
    copy_steps = bulk_steps(backend, "spans")
    assert [s for s in probe if s.startswith(tuple(copy_steps))] == probe[-3:], probe
    async with AsyncStore.open(store.config.uri, transaction_retries=0) as strict:
        for target, retried in ((store, True), (strict, False)):
            outcomes, killed_after = [], []
            for at in range(1, count + 1):
                batch = _spans(f"copy-{retried}-{at}", traces, per_trace)

                async def log(target: AsyncStore = target, batch: list[Span] = batch) -> int:
                    return await target.spans.log_spans(exp, batch)

                outcome, _, seen = await _kill_after(target, at, log)
                outcomes.append(outcome)
                killed_after.append(seen[at - 1])
                assert await _trace_rows(store, batch) == ((traces, total) if outcome == "ok" else (0, 0)), (at, seen)
                assert await target.spans.log_spans(exp, batch) == total
                assert await _trace_rows(store, batch) == (traces, total)
            assert all(any(s.startswith(step) for s in killed_after) for step in copy_steps), killed_after
            assert outcomes == (["ok"] * count if retried else ["unavailable"] * count), outcomes
            assert target.engine.sync_engine.pool.checkedout() == 0


@bulk_path
async def test_log_spans_copy_killed_mid_way_leaves_nothing(store: AsyncStore, backend: str) -> None:
    """Promise: a log_spans batch whose session is killed while the server runs its
    COPY or LOAD DATA (20,000 spans, so it lasts long enough to be caught) raises
    TEMPORARILY_UNAVAILABLE when retries are off and leaves no trace row and no span;
    the next call stores the batch whole."""
    exp = await store.experiments.create("kill-mid-copy")
    batch = _spans("mid-copy", traces=20, per_trace=1000)
    async with AsyncStore.open(store.config.uri, transaction_retries=0) as strict:
        prefix, server_prefix = BULK_SERVER[backend]
        killer = MidStatementKiller(strict.engine, strict.config.uri, prefix=prefix, server_prefix=server_prefix)
        with killer.armed(), pytest.raises(TemporarilyUnavailable):
            await strict.spans.log_spans(exp, batch)
        await killer.wait()
        assert killer.started and killer.killed and not killer.finished
        assert await _trace_rows(store, batch) == (0, 0)
        assert await strict.spans.log_spans(exp, batch) == len(batch)
        assert await _trace_rows(store, batch) == (20, 20_000)
        assert strict.engine.sync_engine.pool.checkedout() == 0


@needs_server
async def test_job_claim_killed_at_every_statement(store: AsyncStore) -> None:
    """Promise: a claim whose session is killed after any one of its statements either
    returns the claimed jobs, and exactly those are RUNNING in the database, or raises
    TEMPORARILY_UNAVAILABLE with every job still PENDING; no job is ever handed out
    twice, and the next claim takes what is left."""
    probe = await store.jobs.create("probe", {})
    _, statements, _ = await _kill_after(store, None, lambda: store.jobs.claim(["probe"], limit=1))
    assert statements >= 1 and (await store.jobs.get(probe.job_id)).status is JobStatus.RUNNING
    handed_out: list[str] = []
    outcomes = []
    for at in range(1, statements + 1):
        name = f"claim-{at}"
        created = {(await store.jobs.create(name, {"i": i})).job_id for i in range(6)}
        claimed: list[str] = []

        async def claim(name: str = name) -> None:
            claimed.extend(job.job_id for job in await store.jobs.claim([name], limit=4))

        outcome, _, _ = await _kill_after(store, at, claim)
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
