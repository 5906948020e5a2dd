"""Reads from a real PostgreSQL streaming replica (``scripts/clusters/pg-replica.sh``).

Replay on the replica is paused (``pg_wal_replay_pause()``) to make it stale on purpose:
what the primary has and the replica has not shows which of them served a read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from asyncstore.replicas import ReplicaState
from tests import dbadmin
from tests.clusters.conftest import SCRIPTS, Replicated, name_or_none, state_after_a_read
from tests.helpers import eventually


@contextlib.asynccontextmanager
async def replay_paused(replica: str) -> AsyncIterator[None]:
    """The replica receives the primary's changes but applies none of them inside the block."""
    url = make_url(replica)
    async with dbadmin.pg_connection(url) as conn:
        await conn.execute("SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        async with dbadmin.pg_connection(url) as conn:
            await conn.execute("SELECT pg_wal_replay_resume()")


async def test_reads_come_from_the_replica_and_primary_reads_the_callers_own_writes(replicated: Replicated) -> None:
    async with AsyncStore.open(replicated.primary, replicas=[replicated.replica], replica_max_lag=3600) as store:
        first = await store.experiments.create("before")
        assert await eventually(lambda: name_or_none(store, first), "before") == "before"
        async with replay_paused(replicated.replica):
            later = await store.experiments.create("while paused")
            # The replica is stale (within the lag bound the store was given): it serves, and
            # has not seen the write; inside primary() the same read sees it.
            assert await name_or_none(store, later) is None
            with store.primary():
                assert (await store.experiments.get(later)).name == "while paused"
        assert await eventually(lambda: name_or_none(store, later), "while paused") == "while paused"
        [status] = store.replica_status()
        assert status.state is ReplicaState.SERVING and status.reads >= 3


async def test_a_replica_further_behind_than_the_bound_leaves_reads_to_the_primary(replicated: Replicated) -> None:
    async with AsyncStore.open(
        replicated.primary, replicas=[replicated.replica], replica_max_lag=0.5, replica_check_interval=0.1
    ) as store:
        first = await store.experiments.create("before")
        assert await eventually(lambda: name_or_none(store, first), "before") == "before"
        async with replay_paused(replicated.replica):
            later = await store.experiments.create("while paused")
            await asyncio.sleep(1.0)  # the last transaction the replica applied is now > 0.5 s old
            assert (await store.experiments.get(later)).name == "while paused"  # read from the primary
            [status] = store.replica_status()
            assert status.state is ReplicaState.LAGGING
            assert status.lag_seconds is not None and status.lag_seconds > 0.5, status
        await asyncio.sleep(0.2)  # the next check finds it caught up
        assert await eventually(lambda: state_after_a_read(store, first), ReplicaState.SERVING) is ReplicaState.SERVING


async def _script(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPTS / "pg-replica.sh"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


@pytest.mark.slow
async def test_reads_under_load_keep_working_while_the_replica_is_stopped_and_started(replicated: Replicated) -> None:
    async with AsyncStore.open(
        replicated.primary, replicas=[replicated.replica], replica_check_interval=0.2
    ) as store:
        exp = await store.experiments.create("read me")
        assert await eventually(lambda: name_or_none(store, exp), "read me") == "read me"
        done = asyncio.Event()
        errors: list[BaseException] = []
        served = 0

        async def reader() -> None:
            nonlocal served
            while not done.is_set():
                try:
                    assert (await store.experiments.get(exp)).name == "read me"
                    served += 1
                except Exception as exc:  # the test's point: none may reach a caller
                    errors.append(exc)
                await asyncio.sleep(0)

        readers = [asyncio.create_task(reader()) for _ in range(4)]
        try:
            await asyncio.sleep(0.5)
            await _script("stop")
            await asyncio.sleep(1.0)
            [down] = store.replica_status()
            during = served
            await asyncio.sleep(0.5)
            assert served > during  # the primary served them meanwhile
            await _script("start")
            before = store.replica_status()[0].reads
            back = await eventually(lambda: _replica_reads_since(store, before), True, seconds=30)
        finally:
            done.set()
            await asyncio.gather(*readers)
            await _script("start")  # whatever happened, leave the replica running
        assert errors == [], errors[:3]
        assert down.state is ReplicaState.DOWN, down
        assert back, store.replica_status()


async def _replica_reads_since(store: AsyncStore, before: int) -> bool:
    await asyncio.sleep(0.05)
    [status] = store.replica_status()
    return status.state is ReplicaState.SERVING and status.reads > before
