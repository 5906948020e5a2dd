"""Alembic driven from async code through ``AsyncConnection.run_sync``.

Migrations are the only authority over the schema. An upgrade holds a
database-level lock for its whole length (an advisory lock on PostgreSQL,
``GET_LOCK`` on MySQL/MariaDB, an exclusive transaction on SQLite), so that several
processes opening the same empty database at once migrate it exactly once: the
others wait, then find it at head. It runs on the caller's event loop, with no
thread and no nested loop, so a web app may call it from its startup hook.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from asyncstore.config import Backend, StoreConfig
from asyncstore.driver import Driver
from asyncstore.engines import create_engine, create_readonly_engine, engine_state, sqlite_file
from asyncstore.errors import (
    InternalError,
    InvalidParameter,
    InvalidState,
    SchemaOutOfDate,
    StoreError,
    TemporarilyUnavailable,
)
from asyncstore.translate import translate

# pg_advisory_lock key: the bytes of "asyncsto" as a signed 64-bit integer.
_PG_LOCK_KEY = int.from_bytes(b"asyncsto", "big", signed=True)
# GET_LOCK names are server-wide: scope the lock to the current database (names are
# limited to 64 characters, hence the hash).
_MYSQL_LOCK_NAME = "CONCAT('asyncstore_migrate:', LEFT(SHA1(DATABASE()), 32))"
_MYSQL_LOCK_TIMEOUT = 300  # seconds; a first migration of a big database can take a while


def script_location() -> str:
    """The folder of the Alembic scripts, inside the installed package or the repository."""
    spec = importlib.util.find_spec("asyncstore.migrations")
    if spec is not None and spec.origin:
        return os.path.dirname(spec.origin)
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")
    if os.path.isfile(os.path.join(here, "env.py")):
        return here
    raise InternalError("the Alembic scripts of asyncstore are missing; reinstall the package")


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for asyncstore's scripts, optionally bound to a connection."""
    cfg = Config()
    cfg.set_main_option("script_location", script_location())
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The revision the code expects; an error if the scripts have more than one head."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise InternalError(
            f"the migration scripts have {len(heads)} heads ({', '.join(heads) or 'none'}); "
            "they must form one line: merge them with `alembic merge`"
        )
    return heads[0]


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` under the migration lock.

    Raises:
        SchemaOutOfDate: the database is at a revision that is not asyncstore's.
    """
    _refuse_foreign(engine, await current_revision(engine))
    await _run_locked(engine, lambda conn: command.upgrade(alembic_config(conn), revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``"base"`` drops every table)."""
    await _run_locked(engine, lambda conn: command.downgrade(alembic_config(conn), revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None for an empty database.

    It only reads: it creates no ``alembic_version`` table, and a SQLite file is read
    through a read-only connection (a file that does not exist is an empty database,
    and is not created).
    """
    path = sqlite_file(engine.url)
    if path is None:
        return await _read_revision(engine)
    if not os.path.isfile(path):
        return None
    reader = create_readonly_engine(_config_of(engine))
    try:
        return await _read_revision(reader)
    finally:
        await reader.dispose()


async def verify(engine: AsyncEngine) -> None:
    """Raise SCHEMA_OUT_OF_DATE unless the database is at the head revision; it only reads."""
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        path = sqlite_file(engine.url)
        _refuse_foreign(engine, current)
        if current is not None:
            found = current
        elif path is not None and not os.path.isfile(path):
            found = f"none (no database at {path})"
        else:
            found = "none (an empty database)"
        raise SchemaOutOfDate(
            f"the database {engine_state(engine).config.safe_uri} is at revision {found}, "
            f"this asyncstore needs {head}: run `asyncstore db upgrade` "
            "(or open the store with upgrade=True)"
        )


async def _read_revision(engine: AsyncEngine) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read)
    except StoreError:
        raise
    except Exception as exc:
        raise translate(exc) from exc


def _config_of(engine: AsyncEngine) -> StoreConfig:
    """The configuration ``engine`` was made with (its URL's, for an engine made elsewhere)."""
    try:
        return engine_state(engine).config
    except InvalidState:
        return StoreConfig.load(engine.url)


async def run_locked(uri: str | URL | None, fn: Callable[[Connection], Any]) -> None:
    """Run ``fn`` on a sync connection under the migration lock (for Alembic's CLI)."""
    engine = create_engine(StoreConfig.load(uri))
    try:
        await _run_locked(engine, fn)
    finally:
        await engine.dispose()


async def _run_locked(engine: AsyncEngine, fn: Callable[[Connection], Any]) -> None:
    backend = engine_state(engine).backend
    try:
        async with engine.connect() as conn:
            await _lock(conn, backend)
            try:
                await conn.run_sync(fn)
                if backend is Backend.SQLITE:
                    await _check_foreign_keys(conn)
                await conn.commit()
            finally:
                await _unlock(conn, backend)
    except StoreError:
        raise
    except CommandError as exc:  # unknown revision, no downgrade path…
        raise InvalidParameter(f"{exc}; known revisions: {', '.join(_known_revisions())}, head, base") from exc
    except Exception as exc:
        raise translate(exc) from exc


def _known_revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def foreign(revision: str | None) -> str | None:
    """None when ``revision`` is None or one of asyncstore's; else ``revision`` with a
    note that says what that means (for "... is at revision <this>")."""
    known = _known_revisions()
    if revision is None or revision in known:
        return None
    return (
        f"{revision}, which is not one of asyncstore's ({', '.join(known)}): another program "
        "(MLflow, for one) or a newer asyncstore manages this schema, and `asyncstore db "
        "upgrade` cannot migrate it"
    )


def _refuse_foreign(engine: AsyncEngine, revision: str | None) -> None:
    """Raise SCHEMA_OUT_OF_DATE when ``revision`` is not one of asyncstore's (:func:`foreign`)."""
    unknown = foreign(revision)
    if unknown is not None:
        raise SchemaOutOfDate(f"the database {_config_of(engine).safe_uri} is at revision {unknown}")


async def _check_foreign_keys(conn: AsyncConnection) -> None:
    """SQLite migrates with foreign keys off: refuse to commit rows they would reject."""
    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()
    if broken:
        table, rowid = tuple(broken[0])[:2]
        raise InternalError(
            f"the migration left {len(broken)} row(s) whose foreign keys point nowhere "
            f"(first: table {table}, rowid {rowid}); nothing was changed"
        )


async def _lock(conn: AsyncConnection, backend: Backend) -> None:
    if backend is Backend.POSTGRESQL:
        # Session-level: held across the per-revision transactions until unlocked.
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
        await conn.commit()
    elif backend is Backend.MYSQL:
        got = await conn.scalar(
            text(f"SELECT GET_LOCK({_MYSQL_LOCK_NAME}, :timeout)"), {"timeout": _MYSQL_LOCK_TIMEOUT}
        )
        await conn.commit()
        if got != 1:
            raise TemporarilyUnavailable(
                f"another process has held the migration lock for {_MYSQL_LOCK_TIMEOUT}s; "
                "try again when its upgrade has finished"
            )
    else:
        # Foreign keys off while tables are rebuilt (batch mode copies a table, drops the
        # old one and renames the copy; with foreign keys on, dropping a referenced table
        # would cascade). The pragma is a no-op inside a transaction, so it is set on the
        # driver connection before ours begins; _check_foreign_keys runs before COMMIT.
        await _sqlite_pragma(conn, "PRAGMA foreign_keys = OFF")
        # The whole upgrade is one BEGIN EXCLUSIVE transaction, begun here so that Alembic
        # sees an outer transaction and commits nothing between revisions: a second
        # process waits in SQLite's busy handler, then finds the database at head.
        await conn.execution_options(asyncstore_sqlite_begin="EXCLUSIVE")
        await conn.begin()


async def _unlock(conn: AsyncConnection, backend: Backend) -> None:
    if conn.invalidated:
        return  # the server dropped the session, and its locks with it
    await conn.rollback()
    if backend is Backend.POSTGRESQL:
        await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
        await conn.commit()
    elif backend is Backend.MYSQL:
        await conn.execute(text(f"SELECT RELEASE_LOCK({_MYSQL_LOCK_NAME})"))
        await conn.commit()
    else:
        await conn.execution_options(asyncstore_sqlite_begin="DEFERRED")
        await _sqlite_pragma(conn, "PRAGMA foreign_keys = ON")


async def _sqlite_pragma(conn: AsyncConnection, pragma: str) -> None:
    """Run a pragma on the aiosqlite connection itself, outside SQLAlchemy's transaction."""
    await (await Driver.of(conn)).execute(pragma)
