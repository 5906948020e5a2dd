"""Admin connections to the test servers; create, clone and drop test databases.

:func:`pg_connection` and :func:`mysql_cursor` are the one way the tests open a plain
driver connection (here, and in :mod:`tests.faults.admin`, which kills and counts the
store's sessions). The database functions below run them in their own short event
loop (``asyncio.run``), so the session-scoped fixtures that use them never share a
loop with a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator

import aiomysql
import asyncpg
from sqlalchemy.engine import URL, make_url

ENV_VARS = {"postgresql": "ASYNCSTORE_TEST_POSTGRESQL_URI", "mysql": "ASYNCSTORE_TEST_MYSQL_URI"}
DEFAULTS = {
    "postgresql": "postgresql://postgres@127.0.0.1:5432/postgres",
    "mysql": "mysql://root@127.0.0.1:3306/test",
}


def server_url(backend: str) -> URL:
    """The admin URL of a backend's test server."""
    return make_url(os.environ.get(ENV_VARS[backend], DEFAULTS[backend]))


def _with_database(backend: str, name: str) -> str:
    return server_url(backend).set(database=name).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def pg_connection(url: URL, database: str | None = None) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to ``url``'s server (``database`` or the URL's own), closed on exit."""
    conn = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        database=database or url.database, timeout=5,
    )
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def mysql_cursor(url: URL, database: str | None = None) -> AsyncIterator[aiomysql.Cursor]:
    """A cursor of a plain autocommit aiomysql connection to ``url``'s server, closed on exit."""
    conn = await aiomysql.connect(
        host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
        password=url.password or "", db=database or url.database, autocommit=True,
        connect_timeout=5, charset="utf8mb4",
    )
    try:
        async with conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


async def _pg(sql: str, database: str | None = None) -> list[asyncpg.Record]:
    async with pg_connection(server_url("postgresql"), database) as conn:
        return list(await conn.fetch(sql))


async def _my(statements: list[str], database: str | None = None) -> list[list[tuple]]:
    results = []
    async with mysql_cursor(server_url("mysql"), database) as cur:
        for sql in statements:
            await cur.execute(sql)
            results.append(list(await cur.fetchall()))
    return results


@functools.cache
def check_server(backend: str) -> str | None:
    """None when the backend's server answers, else what went wrong."""
    if backend == "sqlite":
        return None
    try:
        if backend == "postgresql":
            asyncio.run(_pg("SELECT 1"))
        else:
            asyncio.run(_my(["SELECT 1"]))
    except Exception as exc:  # any failure means "not usable": report it
        return f"{type(exc).__name__}: {exc}"
    return None


def create_database(backend: str, name: str, *, server_collation: bool = False) -> str:
    """Create an empty database and return its URI.

    MySQL: with asyncstore's binary collation, or with ``server_collation`` the
    server's default (as a database made for MLflow has it).
    """
    if backend == "postgresql":
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    else:
        collation = "" if server_collation else " CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        asyncio.run(_my([f"CREATE DATABASE `{name}`{collation}"]))
    return _with_database(backend, name)


def drop_database(backend: str, uri: str) -> None:
    """Drop a database created by :func:`create_database` or :func:`clone_database`."""
    name = make_url(uri).database
    if backend == "postgresql":
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        asyncio.run(_my([f"DROP DATABASE IF EXISTS `{name}`"]))


@functools.cache
def _mysql_schema(template: str) -> tuple[str, ...]:
    """The statements that recreate a migrated MySQL database (cached per template)."""
    tables = [row[0] for row in asyncio.run(_my(["SHOW TABLES"], template))[0]]
    ddl = asyncio.run(_my([f"SHOW CREATE TABLE `{t}`" for t in tables], template))
    versions = asyncio.run(_my(["SELECT version_num FROM alembic_version"], template))[0]
    statements = ["SET FOREIGN_KEY_CHECKS = 0", *(rows[0][1] for rows in ddl)]
    statements += [f"INSERT INTO alembic_version VALUES ('{v[0]}')" for v in versions]
    return tuple(statements)


def clone_database(backend: str, template_uri: str, name: str) -> str:
    """Create a database with the schema (and revision) of a migrated template."""
    template = make_url(template_uri).database or ""
    if backend == "postgresql":
        asyncio.run(_pg(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        return _with_database(backend, name)
    statements = _mysql_schema(template)
    uri = create_database(backend, name)
    asyncio.run(_my(list(statements), name))
    return uri


async def migrate_to_head(uri: str) -> None:
    """Migrate a database to head and close every connection to it."""
    from asyncstore import migrate
    from asyncstore.config import StoreConfig
    from asyncstore.engines import create_engine

    engine = create_engine(StoreConfig.load(uri))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
