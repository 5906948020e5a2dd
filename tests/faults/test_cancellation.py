"""Cancellation storm: a thousand concurrent calls, a third of them cancelled at random."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import AsyncStore
from asyncstore.schema import experiment_tags, experiments
from tests.faults import admin
from tests.helpers import eventually

OPERATIONS = 1000
CANCEL_SHARE = 0.35
HANG_GUARD = 120  # seconds: only there so that a hang fails the test instead of CI
TAGS_PER_EXPERIMENT = 3


async def _write_batch(conn: AsyncConnection, name: str) -> None:
    exp_id = (await conn.execute(insert(experiments).values(name=name))).inserted_primary_key[0]
    await conn.execute(
        insert(experiment_tags),
        [{"experiment_id": exp_id, "key": f"k{j}", "value": name} for j in range(TAGS_PER_EXPERIMENT)],
    )


async def _read(conn: AsyncConnection) -> int:
    return int(await conn.scalar(select(func.count()).select_from(experiments)))


@pytest.mark.slow
async def test_cancellation_storm_leaves_no_connection_transaction_or_half_write(migrated_uri: str) -> None:
    """Promise: after 1,000 concurrent calls (writes through ``uow.run``, writes through
    ``uow.transaction``, reads) with about a third cancelled at random moments, no call
    failed with anything but its cancellation, 0 connections are checked out, the
    server has no open transaction and no session beyond the idle pool, every write
    that reported success is in the database, and every experiment in the database has
    all its tags (no half-written batch)."""
    rng = random.Random(20240607)
    loop = asyncio.get_running_loop()
    succeeded: set[str] = set()

    async with AsyncStore.open(migrated_uri, pool_size=8, max_overflow=8) as store:

        async def operation(i: int) -> None:
            name = f"storm-{i}"
            kind = i % 3
            if kind == 0:
                await store.uow.run(lambda c: _write_batch(c, name))
                succeeded.add(name)
            elif kind == 1:
                async with store.uow.transaction() as conn:
                    await _write_batch(conn, name)
                succeeded.add(name)
            else:
                assert await store.uow.run(_read, write=False) >= 0

        tasks = [asyncio.ensure_future(operation(i)) for i in range(OPERATIONS)]
        for task in tasks:
            if rng.random() < CANCEL_SHARE:
                loop.call_later(rng.uniform(0.0, 0.3), task.cancel)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_GUARD)

        failures = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError)]
        assert failures == []
        cancelled = sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
        assert 0 < cancelled < OPERATIONS and succeeded  # the storm really mixed both
        pool = store.engine.sync_engine.pool
        assert pool.checkedout() == 0
        assert await eventually(lambda: admin.open_transactions(migrated_uri), 0) == 0
        if store.backend.value != "sqlite":
            idle = pool.checkedin()
            assert await eventually(lambda: admin.sessions(migrated_uri), idle) == idle

        async def snapshot(conn: AsyncConnection) -> tuple[set[str], dict[str, int]]:
            names = set((await conn.execute(select(experiments.c.name))).scalars())
            per = await conn.execute(
                select(experiments.c.name, func.count(experiment_tags.c.key))
                .join(experiment_tags, experiment_tags.c.experiment_id == experiments.c.experiment_id)
                .group_by(experiments.c.name)
            )
            return names, {name: int(n) for name, n in per}

        names, tag_counts = await store.uow.run(snapshot, write=False)
        assert succeeded <= names
        assert {name: tag_counts.get(name, 0) for name in names} == {name: TAGS_PER_EXPERIMENT for name in names}


@pytest.mark.slow
async def test_cancellation_storm_over_repository_operations(migrated_uri: str) -> None:
    """Promise: 1,000 concurrent repository calls of every kind (log_batch, log_spans,
    job claim + finish, run get and search, trace search), about a third cancelled at
    random moments: no call fails with anything but its cancellation, 0 connections are
    checked out, no transaction is left open, every log_batch and log_spans that
    reported success is wholly in the database (and nothing is half-written), and every
    job is either PENDING or was claimed by exactly one call."""
    from asyncstore.entities import JobStatus, Metric, Span
    from asyncstore.schema import jobs, metrics, spans

    rng = random.Random(77)
    loop = asyncio.get_running_loop()
    async with AsyncStore.open(migrated_uri, pool_size=8, max_overflow=8) as store:
        exp = await store.experiments.create("storm")
        run_ids = [(await store.runs.create(exp)).info.run_id for _ in range(4)]
        for i in range(200):
            await store.jobs.create("storm-job", {"i": i})
        logged: list[tuple[str, str]] = []  # (run_id, metric key) of successful log_batch
        traced: list[str] = []  # trace ids of successful log_spans
        claimed: list[str] = []

        async def operation(i: int) -> None:
            kind = i % 5
            if kind == 0:
                run_id = run_ids[i % len(run_ids)]
                await store.runs.log_batch(run_id, metrics=[Metric(f"op{i}-{k}", float(k), 1, k) for k in range(10)])
                logged.append((run_id, f"op{i}"))
            elif kind == 1:
                trace_id = f"tr-{i:032x}"
                batch = [Span(trace_id, f"{s + 1:016x}", f"s{s}", 10**18 + s, 10**18 + s + 10) for s in range(5)]
                await store.spans.log_spans(exp, batch)
                traced.append(trace_id)
            elif kind == 2:
                for job in await store.jobs.claim(["storm-job"], limit=2):
                    claimed.append(job.job_id)
                    await store.jobs.finish(job.job_id, "done")
            elif kind == 3:
                await store.runs.search([exp], "metrics.`op0-1` >= 0", max_results=10)
            else:
                await store.traces.search([exp], "span.name = 's1'", max_results=10)

        tasks = [asyncio.ensure_future(operation(i)) for i in range(OPERATIONS)]
        for task in tasks:
            if rng.random() < CANCEL_SHARE:
                loop.call_later(rng.uniform(0.0, 1.0), task.cancel)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_GUARD)

        failures = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError)]
        assert failures == []
        assert any(isinstance(o, asyncio.CancelledError) for o in outcomes) and logged and traced and claimed
        assert store.engine.sync_engine.pool.checkedout() == 0
        assert await eventually(lambda: admin.open_transactions(migrated_uri), 0) == 0

        async def snapshot(conn: AsyncConnection):  # type: ignore[no-untyped-def]
            per_op = {}
            for run_uuid, key in await conn.execute(select(metrics.c.run_uuid, metrics.c.key)):
                op = key.rsplit("-", 1)[0]
                per_op[(run_uuid, op)] = per_op.get((run_uuid, op), 0) + 1
            per_trace = {}
            for (trace_id,) in await conn.execute(select(spans.c.trace_id)):
                per_trace[trace_id] = per_trace.get(trace_id, 0) + 1
            job_states = {row.id: JobStatus(row.status) for row in await conn.execute(select(jobs.c.id, jobs.c.status))}
            return per_op, per_trace, job_states

        per_op, per_trace, job_states = await store.uow.run(snapshot, write=False)
        assert set(logged) <= set(per_op) and set(per_op.values()) == {10}  # whole batches only
        assert set(traced) <= set(per_trace) and set(per_trace.values()) == {5}
        assert len(claimed) == len(set(claimed))
        assert {j for j, s in job_states.items() if s is not JobStatus.PENDING} >= set(claimed)
        assert all(job_states[j] in (JobStatus.SUCCEEDED, JobStatus.RUNNING) for j in claimed)
