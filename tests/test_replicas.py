"""Read replicas on one server: what the router does, checked without a cluster.

The "replica" here is the primary's own database under a second engine (it lags 0:
PostgreSQL is not in recovery, MariaDB replicates from nowhere), or a port nothing
listens on. That is enough to see which engine serves each call, and how a replica
that does not answer is left alone. Reads from a real streaming replica (stale data,
lag, a replica stopped and started under load) are in ``tests/clusters``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from asyncstore.replicas import REPLICA_CONNECT_TIMEOUT, ReplicaState
from tests import dbadmin
from tests.dbadmin import mysql_cursor, pg_connection
from tests.helpers import closed_port, make_experiment, needs_server, read_calls

pytestmark = needs_server


def _reads(store: AsyncStore) -> int:
    [status] = store.replica_status()
    return status.reads


async def test_every_read_only_call_goes_to_the_replica_and_every_write_to_the_primary(migrated_uri: str) -> None:
    async with AsyncStore.open(migrated_uri, replicas=[migrated_uri]) as store:
        calls = await read_calls(store)  # writes: none of them reads from the replica
        assert _reads(store) == 0
        for name, call in calls.items():
            before = _reads(store)
            await call()
            assert _reads(store) == before + 1, name
        [status] = store.replica_status()
        assert (status.state, status.lag_seconds, status.problem) == (ReplicaState.SERVING, 0.0, None)
        before = _reads(store)
        await store.experiments.create("written")
        assert _reads(store) == before


async def test_inside_primary_reads_go_to_the_primary_and_tasks_started_there_too(migrated_uri: str) -> None:
    async with AsyncStore.open(migrated_uri, replicas=[migrated_uri]) as store:
        exp = await make_experiment(store)
        with store.primary():
            await store.experiments.get(exp)
            await asyncio.create_task(store.experiments.get(exp))
        assert _reads(store) == 0
        await store.experiments.get(exp)
        assert _reads(store) == 1


async def test_a_replica_that_does_not_answer_leaves_reads_to_the_primary(
    migrated_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = make_url(migrated_uri).set(host="127.0.0.1", port=closed_port()).render_as_string(hide_password=False)
    with caplog.at_level(logging.WARNING, logger="asyncstore.replicas"):
        async with AsyncStore.open(migrated_uri, replicas=[dead], replica_check_interval=60) as store:
            exp = await make_experiment(store)
            for _ in range(5):
                assert (await store.experiments.get(exp)).experiment_id == str(exp)
            [status] = store.replica_status()
    assert status.state is ReplicaState.DOWN and status.reads == 0
    assert status.problem is not None and status.problem.startswith("connecting failed")
    warnings = [r.getMessage() for r in caplog.records if r.name == "asyncstore.replicas"]
    assert len(warnings) == 1 and "is down" in warnings[0], warnings  # once, not per read


async def test_a_replica_that_accepts_connections_but_never_answers_costs_a_read_at_most_the_timeout(
    migrated_uri: str,
) -> None:
    """A replica behind a partition (the TCP connection opens, nothing comes back) holds a
    read for REPLICA_CONNECT_TIMEOUT, not for the driver's own connect timeout (60 s for
    asyncpg), and then the primary serves it."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # keep the connection open, say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    silent_replica = make_url(migrated_uri).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    try:
        async with AsyncStore.open(migrated_uri, replicas=[silent_replica], replica_check_interval=60) as store:
            exp = await make_experiment(store)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert (await store.experiments.get(exp)).experiment_id == str(exp)
            waited = loop.time() - started
            [status] = store.replica_status()
            started = loop.time()
            await store.experiments.get(exp)  # the replica is left alone now: no wait
            again = loop.time() - started
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert REPLICA_CONNECT_TIMEOUT <= waited < REPLICA_CONNECT_TIMEOUT + 5, waited
    assert again < 1.0, again
    assert status.state is ReplicaState.DOWN and status.problem == f"it did not answer within {REPLICA_CONNECT_TIMEOUT:g}s"


async def test_a_read_that_fails_on_the_replica_is_run_again_on_the_primary(migrated_uri: str, backend: str) -> None:
    # Without pre-ping (MySQL's default), the pooled connection killed below is handed out
    # as it is, and the read's first statement fails on it.
    async with AsyncStore.open(migrated_uri, replicas=[migrated_uri], pool_pre_ping=False) as store:
        exp = await make_experiment(store)
        await store.experiments.get(exp)  # the replica's pool now holds one connection
        [replica_engine] = store._reads.engines if store._reads else []
        async with replica_engine.connect() as conn:
            session = await conn.scalar(text("SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()"))
        await _kill(backend, int(session))
        assert (await store.experiments.get(exp)).experiment_id == str(exp)
        [status] = store.replica_status()
        assert status.state is ReplicaState.DOWN
        assert status.problem is not None and status.problem.startswith("a read failed"), status


async def test_a_replica_that_comes_back_serves_reads_again_after_the_check_interval(
    migrated_uri: str, template_uri: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The "replica" is a database that does not exist yet: connecting to it fails.
    name = f"asyncstore_test_{uuid.uuid4().hex[:12]}"
    later = make_url(migrated_uri).set(database=name).render_as_string(hide_password=False)
    try:
        with caplog.at_level(logging.INFO, logger="asyncstore.replicas"):
            async with AsyncStore.open(migrated_uri, replicas=[later], replica_check_interval=0.05) as store:
                await store.experiments.search()
                [status] = store.replica_status()
                assert (status.state, status.reads) == (ReplicaState.DOWN, 0)
                await asyncio.to_thread(dbadmin.clone_database, backend, template_uri, name)
                await asyncio.sleep(0.1)
                await store.experiments.search()
                [status] = store.replica_status()
                assert (status.state, status.reads) == (ReplicaState.SERVING, 1)
        said = [r.getMessage() for r in caplog.records if r.name == "asyncstore.replicas"]
        assert len(said) == 2 and "is down" in said[0] and "serves reads again" in said[1], said
    finally:
        await asyncio.to_thread(dbadmin.drop_database, backend, later)


async def _kill(backend: str, session: int) -> None:
    url = dbadmin.server_url(backend)
    if backend == "postgresql":
        async with pg_connection(url) as conn:
            await conn.execute("SELECT pg_terminate_backend($1)", session)
    else:
        cursor: Any
        async with mysql_cursor(url) as cursor:
            await cursor.execute(f"KILL {session}")
