"""log_batch calls that run at the same time.

Each call keeps its own outcome on every backend; on a SQLite file the calls that
queue behind the write lock share one transaction (``UnitOfWork.run_grouped``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from asyncstore import AsyncStore
from asyncstore.entities import Metric, Param, RunTag
from asyncstore.errors import InvalidParameter, InvalidState
from asyncstore.tracking import runs as runs_module
from tests.helpers import count_statements, sqlite_only

RUNS = 8
CALLS = 48


def _batch(i: int) -> dict[str, Any]:
    """Call ``i``'s batch: a shared metric at step i, one of its own, a param and a tag."""
    return {
        "metrics": [Metric("m", float(i), 1_000 + i, i), Metric(f"own{i}", -float(i), 1_000 + i, 0)],
        "params": [Param(f"p{i}", str(i))],
        "tags": [RunTag("last", str(i))],
    }


async def _runs(store: AsyncStore, name: str, n: int = RUNS) -> list[str]:
    exp = await store.experiments.create(name)
    return [(await store.runs.create(exp)).info.run_id for _ in range(n)]


def _begins(statements: list[str]) -> int:
    return sum(1 for s in statements if s.startswith("BEGIN IMMEDIATE"))


async def test_concurrent_calls_each_store_their_whole_batch(store: AsyncStore, backend: str) -> None:
    run_ids = await _runs(store, "group-all")
    with count_statements(store) as seen:
        await asyncio.gather(*(store.runs.log_batch(run_ids[i % RUNS], **_batch(i)) for i in range(CALLS)))
    for k, run_id in enumerate(run_ids):
        mine = [i for i in range(CALLS) if i % RUNS == k]
        data = (await store.runs.get(run_id)).data
        assert data.params == {f"p{i}": str(i) for i in mine}
        assert data.metrics == {"m": float(max(mine)), **{f"own{i}": -float(i) for i in mine}}
        history = await store.runs.get_metric_history(run_id, "m")
        assert sorted((m.step, m.value) for m in history) == [(i, float(i)) for i in mine]
        assert data.tags["last"] in {str(i) for i in mine}
        if backend == "sqlite":  # one writer, in call order: the last call's tag wins
            assert data.tags["last"] == str(max(mine))
    if backend == "sqlite":
        assert 1 <= _begins(seen) <= CALLS // 8, f"{_begins(seen)} write transactions for {CALLS} calls"


async def test_a_call_to_a_deleted_run_fails_alone(store: AsyncStore) -> None:
    run_ids = await _runs(store, "group-deleted")
    await store.runs.delete(run_ids[3])
    outcomes = await asyncio.gather(
        *(store.runs.log_batch(run_ids[i % RUNS], **_batch(i)) for i in range(CALLS)), return_exceptions=True
    )
    for i, outcome in enumerate(outcomes):
        if i % RUNS == 3:
            assert isinstance(outcome, InvalidState) and "deleted" in str(outcome), outcome
        else:
            assert outcome is None, outcome
    assert (await store.runs.get(run_ids[3])).data.metrics == {}
    for k, run_id in enumerate(run_ids):
        expected = {} if k == 3 else {f"p{i}": str(i) for i in range(CALLS) if i % RUNS == k}
        assert (await store.runs.get(run_id)).data.params == expected


async def test_conflicting_params_in_concurrent_calls_leave_one_value(store: AsyncStore, backend: str) -> None:
    [run_id, other] = await _runs(store, "group-conflict", 2)
    calls = [
        store.runs.log_batch(run_id, [Metric("a", 1.0, 1, 0)], [Param("lr", "0.1")]),
        store.runs.log_batch(other, [Metric("b", 2.0, 1, 0)], [Param("lr", "0.5")]),
        store.runs.log_batch(run_id, [Metric("c", 3.0, 1, 0)], [Param("lr", "0.2")]),
        store.runs.log_batch(run_id, [Metric("d", 4.0, 1, 0)], [Param("lr", "0.1")]),
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[1] is None
    failed = [i for i in (0, 2, 3) if outcomes[i] is not None]
    for i in failed:
        assert isinstance(outcomes[i], InvalidParameter) and "immutable" in str(outcomes[i]), outcomes[i]
    data = (await store.runs.get(run_id)).data
    written = {"0.1": {"a", "d"}, "0.2": {"c"}}[data.params["lr"]]
    assert set(data.metrics) == written, "a call that failed its param check wrote its metrics"
    assert {key for i, key in ((0, "a"), (2, "c"), (3, "d")) if outcomes[i] is None} == written
    if backend == "sqlite":  # in call order: the first value wins
        assert data.params["lr"] == "0.1" and failed == [2]
    assert (await store.runs.get(other)).data.params == {"lr": "0.5"}


@sqlite_only
async def test_a_group_that_fails_is_written_call_by_call(store: AsyncStore, monkeypatch: pytest.MonkeyPatch) -> None:
    run_ids = await _runs(store, "group-fallback")
    real = runs_module.write_batches

    async def fails_for_groups(conn: Any, backend: Any, items: Any, stored: Any) -> None:
        if len(items) > 1:  # a real database error, in the middle of the group's transaction
            await conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")
        await real(conn, backend, items, stored)

    monkeypatch.setattr(runs_module, "write_batches", fails_for_groups)
    with count_statements(store) as seen:
        outcomes = await asyncio.gather(*(store.runs.log_batch(run_ids[i % RUNS], **_batch(i)) for i in range(16)))
    assert outcomes == [None] * 16
    assert any("no_such_table" in s for s in seen), "no group was formed, so the fallback was not exercised"
    for k, run_id in enumerate(run_ids):
        assert (await store.runs.get(run_id)).data.params == {f"p{i}": str(i) for i in range(16) if i % RUNS == k}


@sqlite_only
async def test_a_caller_cancelled_in_the_queue_writes_nothing(store: AsyncStore) -> None:
    run_ids = await _runs(store, "group-cancel")
    lock = store.uow.state.write_lock
    assert lock is not None
    await lock.acquire()  # another transaction of this process holds the write lock
    try:
        first = asyncio.ensure_future(store.runs.log_batch(run_ids[0], **_batch(0)))
        await asyncio.sleep(0.05)  # the writer took call 0 as its group and waits for the lock
        queued = [asyncio.ensure_future(store.runs.log_batch(run_ids[i], **_batch(i))) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        first.cancel()  # its group is being written: it commits whole
        queued[1].cancel()  # still in the queue: taken out
    finally:
        lock.release()
    await asyncio.gather(queued[0], queued[2])
    for task in (first, queued[1]):
        with pytest.raises(asyncio.CancelledError):
            await task
    params = [(await store.runs.get(run_ids[i])).data.params for i in range(4)]
    assert params == [{"p0": "0"}, {"p1": "1"}, {}, {"p3": "3"}]
