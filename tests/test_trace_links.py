"""Traces linked to runs (MLflow's ``entity_associations``), on every backend."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from asyncstore import AsyncStore
from asyncstore.errors import InvalidParameter, NotFound
from asyncstore.schema import entity_associations
from tests.helpers import make_experiment, new_trace_id


async def _links(store: AsyncStore) -> int:
    async with store.uow.transaction(write=False) as conn:
        return int((await conn.execute(select(func.count()).select_from(entity_associations))).scalar_one())


async def test_link_read_and_unlink(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    run = await store.runs.create(exp)
    other = await store.runs.create(exp)
    a = (await store.traces.start(exp)).trace_id
    b = (await store.traces.start(exp)).trace_id
    await store.traces.link_to_run([a, a], run.run_id)
    await store.traces.link_to_run([a, b], run.run_id)  # a again: a no-op
    await store.traces.link_to_run([a], other.run_id)
    assert sorted(await store.traces.linked_trace_ids(run.run_id)) == sorted([a, b])
    assert sorted(await store.traces.linked_run_ids(a)) == sorted([run.run_id, other.run_id])
    assert await store.traces.linked_run_ids(b) == [run.run_id]
    assert await _links(store) == 3
    assert await store.traces.unlink_from_run([a], run.run_id) == 1
    assert await store.traces.unlink_from_run([a], run.run_id) == 0
    assert await store.traces.linked_trace_ids(run.run_id) == [b]
    assert await store.traces.linked_run_ids(a) == [other.run_id]
    await store.traces.link_to_run([], run.run_id)
    assert await _links(store) == 2


async def test_bad_links_are_refused_and_write_nothing(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    run = await store.runs.create(exp)
    known = (await store.traces.start(exp)).trace_id
    with pytest.raises(NotFound, match="no run with id"):
        await store.traces.link_to_run([known], "0" * 32)
    with pytest.raises(NotFound, match="no trace with id"):
        await store.traces.link_to_run([known, new_trace_id()], run.run_id)
    with pytest.raises(InvalidParameter, match="at most 100"):
        await store.traces.link_to_run([new_trace_id() for _ in range(101)], run.run_id)
    with pytest.raises(InvalidParameter, match="list of trace ids"):
        await store.traces.link_to_run(known, run.run_id)
    with pytest.raises(InvalidParameter):
        await store.traces.link_to_run(["not-a-trace"], run.run_id)
    with pytest.raises(InvalidParameter):
        await store.traces.linked_trace_ids("no such/run")
    assert await _links(store) == 0
