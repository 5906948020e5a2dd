"""Scratch databases: created fresh for one benchmark run and dropped at its end.

The benchmark never writes into an existing database. Without a URI it uses a
SQLite file in a new temporary directory. With a SQLite file URI it uses a new
file with a random name in that file's directory. With a PostgreSQL or MySQL URI
it connects to that server (to the database the URI names, only to issue
``CREATE DATABASE``) and creates a database with a random name; :meth:`drop`
removes it again, and the runner calls it in a ``finally`` so that an error or
Ctrl-C still cleans up.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import sqlite3
import tempfile

import aiomysql
import asyncpg
from sqlalchemy.engine import URL, make_url
from typing_extensions import assert_never

from asyncstore.config import Backend, backend_of, is_sqlite_memory, redact, sync_url
from asyncstore.errors import ConfigurationError

NAME_PREFIX = "asyncstore_bench_"
"""Every scratch database's name starts with this, followed by random hex."""

_CONNECT_TIMEOUT = 10  # seconds: an unreachable server should fail fast, not hang the CLI
@dataclasses.dataclass
class ScratchDatabase:
    """One fresh database and how to reach it.

    Attributes:
        backend: the database family.
        url: its URI (plain scheme; asyncstore maps it to the async driver).
        name: the database name (SQLite: the file path).
        tempdir: the temporary directory holding a SQLite file, removed on drop.
        server_version: e.g. ``PostgreSQL 15.10``, ``MariaDB 10.11.6``, ``SQLite 3.45.1``.
        dropped: whether :meth:`drop` has run.
    """

    backend: Backend
    url: URL
    name: str
    tempdir: str | None = None
    server_version: str = ""
    admin_url: URL | None = None
    """Server URI (the database the user named) used to create and drop this one."""
    dropped: bool = False

    @property
    def uri(self) -> str:
        """The URI with its password (pass it to code, never print it)."""
        return self.url.render_as_string(hide_password=False)

    @property
    def safe_uri(self) -> str:
        """The URI with its password hidden (for reports)."""
        return redact(self.url)

    def sync_uri(self) -> str:
        """The URI for a synchronous SQLAlchemy engine (psycopg2 / PyMySQL / sqlite3)."""
        return sync_url(self.url).render_as_string(hide_password=False)

    async def drop(self) -> None:
        """Remove the database (idempotent)."""
        if self.dropped:
            return
        if self.backend is Backend.SQLITE:
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    os.remove(self.name + suffix)
                except FileNotFoundError:
                    pass
            if self.tempdir is not None:
                shutil.rmtree(self.tempdir, ignore_errors=True)
        elif self.backend is Backend.POSTGRESQL:
            conn = await _pg_admin(self.admin_url or self.url)
            try:
                # FORCE (PostgreSQL 13+) ends sessions a crashed workload left open.
                force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}"{force}')
            finally:
                await conn.close()
        elif self.backend is Backend.MYSQL:
            my = await _mysql_admin(self.admin_url or self.url)
            try:
                async with my.cursor() as cur:
                    await cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
            finally:
                my.close()
        else:
            assert_never(self.backend)
        self.dropped = True


async def create_scratch(uri: str | None, label: str) -> ScratchDatabase:
    """Create a fresh, empty database next to (never inside) what ``uri`` names.

    Args:
        uri: None for a temporary SQLite file, else a sqlite/postgresql/mysql URI.
        label: a word added to the name (``store``, ``mlflow``) to tell databases apart.

    Raises:
        ConfigurationError: an unsupported URI (e.g. in-memory SQLite).
    """
    token = secrets.token_hex(6)
    if uri is None:
        tempdir = tempfile.mkdtemp(prefix=NAME_PREFIX)
        path = os.path.join(tempdir, f"{label}.db")
        return ScratchDatabase(
            Backend.SQLITE, make_url(f"sqlite:///{path}"), path, tempdir, f"SQLite {sqlite3.sqlite_version}"
        )
    url = make_url(uri)
    backend = backend_of(url)
    if backend is Backend.SQLITE:
        if is_sqlite_memory(url):
            raise ConfigurationError(
                "asyncstore bench needs a SQLite file, not an in-memory database; "
                "omit --uri to use a temporary file, or give sqlite:///path/to/dir/any.db"
            )
        folder = os.path.dirname(os.path.abspath(url.database or ""))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{NAME_PREFIX}{token}_{label}.db")
        return ScratchDatabase(backend, url.set(database=path), path, None, f"SQLite {sqlite3.sqlite_version}")
    name = f"{NAME_PREFIX}{token}_{label}"
    if backend is Backend.POSTGRESQL:
        conn = await _pg_admin(url)
        try:
            version = await conn.fetchval("SHOW server_version")
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return ScratchDatabase(backend, url.set(database=name), name, None, f"PostgreSQL {version}", url)
    if backend is Backend.MYSQL:
        my = await _mysql_admin(url)
        try:
            async with my.cursor() as cur:
                await cur.execute("SELECT VERSION()")
                (version,) = await cur.fetchone()
                await cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        finally:
            my.close()
        flavour = "MariaDB" if "mariadb" in str(version).lower() else "MySQL"
        return ScratchDatabase(backend, url.set(database=name), name, None, f"{flavour} {version}", url)
    assert_never(backend)


async def exists(scratch: ScratchDatabase) -> bool:
    """Whether the scratch database is still there (used by tests and checks)."""
    if scratch.backend is Backend.SQLITE:
        return os.path.exists(scratch.name)
    if scratch.backend is Backend.POSTGRESQL:
        conn = await _pg_admin(scratch.admin_url or scratch.url)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", scratch.name))
        finally:
            await conn.close()
    my = await _mysql_admin(scratch.admin_url or scratch.url)
    try:
        async with my.cursor() as cur:
            await cur.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (scratch.name,))
            return (await cur.fetchone()) is not None
    finally:
        my.close()


async def _pg_admin(url: URL) -> asyncpg.Connection:
    """A connection to the server's maintenance database (never the scratch one)."""
    database = url.database
    if database is None or database.startswith(NAME_PREFIX):
        database = "postgres"
    return await asyncpg.connect(
        host=url.host or url.query.get("host") or "127.0.0.1",
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=database,
        timeout=_CONNECT_TIMEOUT,
    )


async def _mysql_admin(url: URL) -> aiomysql.Connection:
    database = url.database
    if database is not None and database.startswith(NAME_PREFIX):
        database = None
    return await aiomysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        db=database,
        autocommit=True,
        connect_timeout=_CONNECT_TIMEOUT,
        charset="utf8mb4",
    )
