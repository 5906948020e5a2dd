"""Reads from a real MariaDB asynchronous replica (``scripts/clusters/mariadb-replica.sh``):
its lag is ``Seconds_Behind_Master``, NULL while its SQL thread is stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from asyncstore.replicas import ReplicaState
from tests import dbadmin
from tests.clusters.conftest import Replicated, name_or_none, state_after_a_read
from tests.helpers import eventually


async def _replica(replica: str, statement: str) -> None:
    async with dbadmin.mysql_cursor(make_url(replica).set(database=None)) as cursor:
        await cursor.execute(statement)


@contextlib.asynccontextmanager
async def replication_delayed(replica: str, seconds: int) -> AsyncIterator[None]:
    """The replica applies each transaction ``seconds`` after the primary committed it."""
    await _replica(replica, "STOP SLAVE")
    await _replica(replica, f"CHANGE MASTER TO MASTER_DELAY = {seconds}")
    await _replica(replica, "START SLAVE")
    try:
        yield
    finally:
        await _replica(replica, "STOP SLAVE")
        await _replica(replica, "CHANGE MASTER TO MASTER_DELAY = 0")
        await _replica(replica, "START SLAVE")


@contextlib.asynccontextmanager
async def applying_stopped(replica: str) -> AsyncIterator[None]:
    """The replica receives the primary's changes but applies none (Seconds_Behind_Master NULL)."""
    await _replica(replica, "STOP SLAVE SQL_THREAD")
    try:
        yield
    finally:
        await _replica(replica, "START SLAVE SQL_THREAD")


async def test_reads_come_from_the_replica_and_primary_reads_the_callers_own_writes(
    mariadb_replicated: Replicated,
) -> None:
    async with AsyncStore.open(
        mariadb_replicated.primary, replicas=[mariadb_replicated.replica], replica_max_lag=3600
    ) as store:
        first = await store.experiments.create("before")
        assert await eventually(lambda: name_or_none(store, first), "before") == "before"
        [status] = store.replica_status()
        assert (status.state, status.lag_seconds) == (ReplicaState.SERVING, 0.0)
        async with replication_delayed(mariadb_replicated.replica, 5):
            later = await store.experiments.create("delayed")
            assert await name_or_none(store, later) is None  # the replica has not applied it yet
            with store.primary():
                assert (await store.experiments.get(later)).name == "delayed"
            assert await eventually(lambda: name_or_none(store, later), "delayed", seconds=30) == "delayed"


async def test_a_replica_that_applies_nothing_leaves_reads_to_the_primary(mariadb_replicated: Replicated) -> None:
    async with AsyncStore.open(
        mariadb_replicated.primary, replicas=[mariadb_replicated.replica], replica_check_interval=0.1
    ) as store:
        first = await store.experiments.create("before")
        assert await eventually(lambda: name_or_none(store, first), "before") == "before"
        async with applying_stopped(mariadb_replicated.replica):
            later = await store.experiments.create("while stopped")
            assert await eventually(lambda: state_after_a_read(store, first), ReplicaState.LAGGING) is (
                ReplicaState.LAGGING
            )
            assert (await store.experiments.get(later)).name == "while stopped"  # from the primary
            [status] = store.replica_status()
            assert (status.lag_seconds, status.problem) == (None, "not replicating")
        assert await eventually(lambda: state_after_a_read(store, first), ReplicaState.SERVING) is (
            ReplicaState.SERVING
        )
        assert await name_or_none(store, later) == "while stopped"
