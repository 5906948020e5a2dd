"""Clusters on this machine, started by the scripts in ``scripts/clusters`` (README,
"Read replicas" and "A MariaDB Galera cluster"): a PostgreSQL streaming replica of the
test server, a MariaDB primary with an asynchronous replica, and a 3-node MariaDB
Galera cluster.

A cluster that does not answer skips its tests with the command that starts it, unless
``ASYNCSTORE_TEST_CLUSTERS`` names it (``pg-replica``, ``mariadb-replica``, ``galera``):
then the run fails, as CI's does.

Locations: ``ASYNCSTORE_TEST_PG_REPLICA_URI`` (default
``postgresql://postgres@127.0.0.1:5433/postgres``), whose primary is the PostgreSQL test
server (``ASYNCSTORE_TEST_POSTGRESQL_URI``); ``ASYNCSTORE_TEST_MARIADB_REPLICA_URIS``
(default ``mysql://root@127.0.0.1:3321,mysql://root@127.0.0.1:3322``: the primary, then
its replica); ``ASYNCSTORE_TEST_GALERA_URIS`` (default
``mysql://root@127.0.0.1:3311,…:3312,…:3313``), one per node.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url

from asyncstore import AsyncStore, NotFound
from asyncstore.replicas import ReplicaState
from tests import dbadmin
from tests.helpers import eventually

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "clusters"
PG_REPLICA = make_url(os.environ.get("ASYNCSTORE_TEST_PG_REPLICA_URI", "postgresql://postgres@127.0.0.1:5433/postgres"))
MARIADB_PAIR = [
    make_url(uri.strip())
    for uri in os.environ.get(
        "ASYNCSTORE_TEST_MARIADB_REPLICA_URIS", "mysql://root@127.0.0.1:3321,mysql://root@127.0.0.1:3322"
    ).split(",")
]
GALERA = [
    make_url(uri.strip())
    for uri in os.environ.get(
        "ASYNCSTORE_TEST_GALERA_URIS",
        ",".join(f"mysql://root@127.0.0.1:{port}" for port in (3311, 3312, 3313)),
    ).split(",")
]


def _required(name: str) -> bool:
    return name in {n.strip() for n in os.environ.get("ASYNCSTORE_TEST_CLUSTERS", "").split(",")}


def _unavailable(name: str, problem: str, start: str) -> None:
    """Fail when the cluster is required (CI names every cluster after starting them), else
    skip: the clusters are started by hand or by CI's second step, not by the README's test
    command, so a plain run without them says which command starts each (as the backend
    fixture does for an unreachable server that is not required)."""
    message = f"{name} not reachable ({problem}); start it with {start}"
    if _required(name):
        pytest.fail(message + " — it is named in ASYNCSTORE_TEST_CLUSTERS, so this is a failure")
    pytest.skip(message)


async def _pg_recovering(url: URL) -> bool:
    async with dbadmin.pg_connection(url) as conn:
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))


@dataclass(frozen=True)
class Replicated:
    """A database on the primary and the same database on its replica."""

    primary: str
    replica: str


@pytest.fixture(scope="session")
def pg_replica() -> URL:
    """The streaming replica's admin URL (skips or fails when it does not answer)."""
    start = f"{SCRIPTS / 'pg-replica.sh'} start"
    problem = dbadmin.check_server("postgresql")
    if problem is None:
        try:
            if not asyncio.run(_pg_recovering(PG_REPLICA)):
                problem = f"{PG_REPLICA.render_as_string()} is not a replica (not in recovery)"
        except Exception as exc:  # any failure means "not usable": report it
            problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        _unavailable("pg-replica", problem, start)
    return PG_REPLICA


async def _pg_has_schema(url: URL, name: str) -> bool:
    """Whether the database ``name`` on ``url``'s server exists and is migrated."""
    try:
        async with dbadmin.pg_connection(url, name) as conn:
            return bool(await conn.fetchval("SELECT EXISTS (SELECT FROM alembic_version)"))
    except Exception:  # not there yet
        return False


async def _mysql_has_schema(url: URL, name: str) -> bool:
    """Whether the database ``name`` on ``url``'s server exists and is migrated."""
    try:
        async with dbadmin.mysql_cursor(url, name) as cursor:
            await cursor.execute("SELECT COUNT(*) FROM alembic_version")
            return bool((await cursor.fetchone())[0])
    except Exception:  # not there yet
        return False


def _wait_for_schema(has_schema: Callable[[URL, str], Awaitable[bool]], replica: URL, name: str) -> None:
    """Wait until the replica has the database the primary just migrated."""
    got = asyncio.run(eventually(lambda: has_schema(replica, name), True, seconds=30))
    assert got, f"{replica.render_as_string()} did not get the database {name} in 30 s"


@pytest.fixture
def replicated(pg_replica: URL) -> Iterator[Replicated]:
    """A fresh migrated database on the primary, once the replica has it too; dropped after."""
    name = f"asyncstore_test_{uuid.uuid4().hex[:12]}"
    primary = dbadmin.create_database("postgresql", name)
    try:
        asyncio.run(dbadmin.migrate_to_head(primary))
        _wait_for_schema(_pg_has_schema, pg_replica, name)
        yield Replicated(primary, pg_replica.set(database=name).render_as_string(hide_password=False))
    finally:
        dbadmin.drop_database("postgresql", primary)


async def _galera_sizes(nodes: list[URL]) -> list[str]:
    sizes = []
    for url in nodes:
        async with dbadmin.mysql_cursor(url) as cursor:
            await cursor.execute("SHOW STATUS LIKE 'wsrep_cluster_size'")
            row = await cursor.fetchone()
            sizes.append(str(row[1]) if row else "not a Galera node")
    return sizes


@pytest.fixture(scope="session")
def galera_nodes() -> list[URL]:
    """The Galera nodes' admin URLs (skips or fails when the cluster does not answer)."""
    start = f"{SCRIPTS / 'galera.sh'} start"
    try:
        sizes = asyncio.run(_galera_sizes(GALERA))
        problem = None if sizes == [str(len(GALERA))] * len(GALERA) else f"cluster sizes seen by the nodes: {sizes}"
    except Exception as exc:  # any failure means "not usable": report it
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        _unavailable("galera", problem, start)
    return GALERA


async def _server_sql(url: URL, statement: str) -> None:
    async with dbadmin.mysql_cursor(url) as cursor:
        await cursor.execute(statement)


@pytest.fixture
def galera_db(galera_nodes: list[URL]) -> Iterator[list[str]]:
    """A fresh, empty database on the cluster: its URI through each node; dropped after."""
    name = f"asyncstore_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_server_sql(galera_nodes[0], f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    try:
        yield [node.set(database=name).render_as_string(hide_password=False) for node in galera_nodes]
    finally:
        asyncio.run(_server_sql(galera_nodes[0], f"DROP DATABASE IF EXISTS `{name}`"))


async def _mariadb_replicating(replica: URL) -> str | None:
    async with dbadmin.mysql_cursor(replica) as cursor:
        await cursor.execute("SHOW REPLICA STATUS")
        row = await cursor.fetchone()
        names = [d[0] for d in cursor.description or ()]
    if row is None:
        return f"{replica.render_as_string()} replicates from nowhere"
    status = dict(zip(names, row))
    if (status.get("Slave_IO_Running"), status.get("Slave_SQL_Running")) != ("Yes", "Yes"):
        return f"{replica.render_as_string()} is not replicating: {status.get('Last_Error') or status.get('Last_IO_Error')}"
    return None


@pytest.fixture(scope="session")
def mariadb_pair() -> list[URL]:
    """The MariaDB primary and its replica (skips or fails when they do not answer)."""
    try:
        problem = asyncio.run(_mariadb_replicating(MARIADB_PAIR[1]))
    except Exception as exc:  # any failure means "not usable": report it
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        _unavailable("mariadb-replica", problem, f"{SCRIPTS / 'mariadb-replica.sh'} start")
    return MARIADB_PAIR


@pytest.fixture
def mariadb_replicated(mariadb_pair: list[URL]) -> Iterator[Replicated]:
    """A fresh migrated database on the MariaDB primary, once its replica has it; dropped after."""
    primary_url, replica_url = mariadb_pair
    name = f"asyncstore_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_server_sql(primary_url, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    primary = primary_url.set(database=name).render_as_string(hide_password=False)
    try:
        asyncio.run(dbadmin.migrate_to_head(primary))
        _wait_for_schema(_mysql_has_schema, replica_url, name)
        yield Replicated(primary, replica_url.set(database=name).render_as_string(hide_password=False))
    finally:
        asyncio.run(_server_sql(primary_url, f"DROP DATABASE IF EXISTS `{name}`"))


# --- what the replica tests read ------------------------------------------------------


async def name_or_none(store: AsyncStore, experiment_id: str) -> str | None:
    """The experiment's name as a read finds it (None: not there, e.g. on a stale replica)."""
    try:
        return (await store.experiments.get(experiment_id)).name
    except NotFound:
        return None


async def state_after_a_read(store: AsyncStore, experiment_id: str) -> ReplicaState:
    """The (only) replica's state once a read has gone through the router."""
    await store.experiments.get(experiment_id)
    [status] = store.replica_status()
    return status.state
