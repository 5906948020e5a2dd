"""Alembic driven from async code through ``AsyncConnection.run_sync``.

Migrations are the only authority over the schema. An upgrade holds a
database-level lock for its whole length (an advisory lock on PostgreSQL,
``GET_LOCK`` on MySQL/MariaDB, a lock table on a Galera cluster, whose nodes do not
share GET_LOCK; an exclusive transaction on SQLite), so that several
processes opening the same empty database at once migrate it exactly once: the
others wait, then find it at head. It runs on the caller's event loop, with no
thread and no nested loop, so a web app may call it from its startup hook.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import importlib.util
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Index, MetaData, Table, text
from sqlalchemy import inspect as reflect
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from asyncstore import mlflow_schema
from asyncstore.config import Backend, StoreConfig, redact, sync_url
from asyncstore.dialect import galera_node
from asyncstore.driver import Driver
from asyncstore.engines import create_engine, create_readonly_engine, engine_state, sqlite_file
from asyncstore.schema import metadata
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
# Galera replicates no GET_LOCK: the lock is a table, created by the holder and dropped
# when it is done. DDL runs in the same total order on every node (TOI), so of two
# nodes creating it at once, one succeeds and the other finds it exists (error 1050).
GALERA_LOCK_TABLE = "asyncstore_migration_lock"
_MYSQL_TABLE_EXISTS = 1050


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


class Kind(enum.Enum):
    """What kind of database a URI points at (:func:`inspect_database`)."""

    EMPTY = "empty"
    ASYNCSTORE = "asyncstore"
    MLFLOW = "mlflow"
    FOREIGN = "foreign"


@dataclasses.dataclass(frozen=True)
class Found:
    """What :func:`inspect_database` found.

    Attributes:
        kind: empty, asyncstore's, MLflow's or another program's.
        revision: the Alembic revision the database is at (None when empty).
        missing: for an MLflow database, the ``table.column`` names asyncstore uses
            that it lacks (empty when asyncstore can serve it).
        absent_indexes: for an MLflow database, the names of asyncstore's indexes it
            lacks (asyncstore serves it without them, some calls slower:
            :func:`add_indexes` adds them).
    """

    kind: Kind
    revision: str | None
    missing: tuple[str, ...] = ()
    absent_indexes: tuple[str, ...] = ()

    @property
    def served(self) -> bool:
        """Whether asyncstore serves this database as it is (no migration to run)."""
        if self.kind is Kind.ASYNCSTORE:
            return self.revision == head_revision()
        return self.kind is Kind.MLFLOW and not self.missing


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` under the migration lock.

    Raises:
        SchemaOutOfDate: the database is not asyncstore's (MLflow's, another program's).
    """
    _refuse_foreign(engine, await inspect_database(engine))
    await _run_locked(engine, lambda conn: command.upgrade(alembic_config(conn), revision))


async def wait_for_upgrades(engine: AsyncEngine) -> None:
    """Wait until no upgrade of the database runs: take the migration lock and release it.

    An opener that finds asyncstore's schema at an older revision may be looking at an
    upgrade in progress (on MySQL/MariaDB each revision's DDL shows as it lands); once
    that upgrade ends, the database is at head.
    """
    await _run_locked(engine, lambda conn: None)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Downgrade the database to ``revision`` (``"base"`` drops every table).

    Raises:
        SchemaOutOfDate: the database is not asyncstore's (MLflow's, another program's).
    """
    _refuse_foreign(engine, await inspect_database(engine))
    await _run_locked(engine, lambda conn: command.downgrade(alembic_config(conn), revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None for an empty database.

    It only reads: it creates no ``alembic_version`` table, and a SQLite file is read
    through a read-only connection (a file that does not exist is an empty database,
    and is not created).
    """
    return await _reading(engine, _read_revision, None)


async def inspect_database(engine: AsyncEngine) -> Found:
    """Which kind of database ``engine`` points at, at which revision; it only reads,
    as :func:`current_revision` does.

    A revision of asyncstore's makes it asyncstore's. Any other revision with MLflow's
    tables makes it MLflow's: its tables are then reflected to find what asyncstore
    would miss in them.
    """
    return await _reading(engine, _inspect, Found(Kind.EMPTY, None))


_T = TypeVar("_T")


async def _reading(engine: AsyncEngine, read: Callable[[AsyncEngine], Awaitable[_T]], absent: _T) -> _T:
    """``read(engine)``; for a SQLite file through a read-only engine (``absent`` when
    there is no file)."""
    path = sqlite_file(engine.url)
    if path is None:
        return await read(engine)
    if not os.path.isfile(path):
        return absent
    reader = create_readonly_engine(_config_of(engine))
    try:
        return await read(reader)
    finally:
        await reader.dispose()


async def verify(engine: AsyncEngine) -> None:
    """Raise SCHEMA_OUT_OF_DATE unless asyncstore serves the database as it is: an
    asyncstore database at the head revision, or an MLflow database with every table
    and column asyncstore uses. It only reads."""
    found = await inspect_database(engine)
    if found.served:
        return
    _refuse_foreign(engine, found)
    path = sqlite_file(engine.url)
    if found.revision is not None:
        state = found.revision
    elif path is not None and not os.path.isfile(path):
        state = f"none (no database at {path})"
    else:
        state = "none (an empty database)"
    raise SchemaOutOfDate(
        f"the database {_config_of(engine).safe_uri} is at revision {state}, "
        f"this asyncstore needs {head_revision()}: run `asyncstore db upgrade` "
        "(or open the store with upgrade=True)"
    )


def describe(found: Found, safe_uri: str) -> str:
    """One line that says what :func:`inspect_database` found (``db current``, ``db check``)."""
    if found.kind is Kind.EMPTY:
        return f"{safe_uri} is at revision none (an empty database)"
    if found.kind is Kind.ASYNCSTORE:
        head = head_revision()
        state = "(head)" if found.revision == head else f"(head is {head})"
        return f"{safe_uri} is an asyncstore database at revision {found.revision} {state}"
    if found.kind is Kind.FOREIGN:
        return f"{safe_uri} is at revision {foreign(found.revision)}"
    line = (
        f"{safe_uri} is an MLflow database at revision {found.revision} "
        f"({mlflow_schema.release_of(str(found.revision))})"
    )
    if found.missing:
        return f"{line}: {_mlflow_out_of_date(found, safe_uri)}"
    line = f"{line}: asyncstore serves it as it is, and never migrates it"
    if found.absent_indexes:
        line += (
            f"; it lacks {len(found.absent_indexes)} of asyncstore's indexes "
            f"({', '.join(found.absent_indexes)}), without which some calls are slower on large tables: "
            f"`asyncstore db upgrade --indexes {safe_uri}` adds them"
        )
    return line


def _mlflow_out_of_date(found: Found, safe_uri: str) -> str:
    shown = ", ".join(found.missing[:5]) + (f" and {len(found.missing) - 5} more" if len(found.missing) > 5 else "")
    return (
        f"it lacks {shown}, which asyncstore uses; asyncstore serves the databases of "
        f"MLflow {mlflow_schema.SUPPORTED}: run `mlflow db upgrade {redact(sync_url(make_url(safe_uri)))}` "
        "with such an MLflow"
    )


async def _read_revision(engine: AsyncEngine) -> str | None:
    def read(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    return await _run_read(engine, read)


async def _inspect(engine: AsyncEngine) -> Found:
    def read(conn: Connection) -> Found:
        revision = MigrationContext.configure(conn).get_current_revision()
        if revision is None:
            return Found(Kind.EMPTY, None)
        if revision in _known_revisions():
            return Found(Kind.ASYNCSTORE, revision)
        inspector = reflect(conn)
        tables = set(inspector.get_table_names())
        if not mlflow_schema.is_mlflow(tables):
            return Found(Kind.FOREIGN, revision)
        columns = {
            table.name: {c["name"] for c in inspector.get_columns(table.name)}
            for table in metadata.sorted_tables
            if table.name in tables
        }
        absent = mlflow_schema.absent_indexes(_index_names(inspector, columns))
        return Found(
            Kind.MLFLOW, revision, tuple(mlflow_schema.missing_columns(columns)), tuple(str(ix.name) for ix in absent)
        )

    return await _run_read(engine, read)


def _index_names(inspector: Any, tables: Iterable[str]) -> dict[str, set[str]]:
    return {table: {str(ix["name"]) for ix in inspector.get_indexes(table)} for table in tables}


async def add_indexes(engine: AsyncEngine) -> list[str]:
    """Give an MLflow database the indexes of asyncstore's schema that it lacks, each
    named ``asyncstore_`` + its name in asyncstore's schema; MLflow's own tables,
    columns and indexes are left as they are. Under the migration lock; running it
    again adds nothing.

    Returns:
        The names of the indexes created.

    Raises:
        SchemaOutOfDate: the database is not an MLflow database that asyncstore serves
            (asyncstore's own databases have these indexes from their migrations).
    """
    _only_served_mlflow(engine, await inspect_database(engine))
    created: list[str] = []

    def add(conn: Connection) -> None:
        inspector = reflect(conn)
        names = _index_names(inspector, [t.name for t in metadata.sorted_tables])
        for ix in mlflow_schema.absent_indexes(names):
            table = ix.table
            assert table is not None
            copy = table.to_metadata(MetaData())
            name = mlflow_schema.INDEX_PREFIX + str(ix.name)
            Index(name, *(copy.c[c.name] for c in ix.columns)).create(conn)
            created.append(name)

    await _run_locked(engine, add)
    return created


async def drop_indexes(engine: AsyncEngine) -> list[str]:
    """Drop the indexes :func:`add_indexes` added to an MLflow database (the
    ``asyncstore_`` ones), and nothing else. Returns their names.

    MySQL keeps one index per foreign key, and drops the one it made itself when
    another index starts with the same columns: such an index (named after its
    first column, as MySQL names it) is put back before the ``asyncstore_`` one
    that replaced it is dropped, so the database ends as it was.

    Raises:
        SchemaOutOfDate: the database is not an MLflow database.
    """
    found = await inspect_database(engine)
    if found.kind is not Kind.MLFLOW:
        _refuse_not_mlflow(engine, found)
    dropped: list[str] = []

    def drop(conn: Connection) -> None:
        inspector = reflect(conn)
        names = _index_names(inspector, inspector.get_table_names())
        for table, name in mlflow_schema.added_indexes(names):
            reflected = Table(table, MetaData(), autoload_with=conn)
            ours = next(ix for ix in reflected.indexes if ix.name == name)
            if conn.dialect.name in ("mysql", "mariadb"):
                _keep_foreign_key_indexes(conn, reflected, ours)
            ours.drop(conn)
            dropped.append(name)

    await _run_locked(engine, drop)
    return dropped


def _keep_foreign_key_indexes(conn: Connection, table: Table, leaving: Index) -> None:
    """Before ``leaving`` is dropped on MySQL: create the index a foreign key of
    ``table`` would be left without (see :func:`drop_indexes`)."""
    others = [[c.name for c in ix.columns] for ix in table.indexes if ix is not leaving]
    others.append([c.name for c in table.primary_key.columns])
    for fk in table.foreign_key_constraints:
        columns = [c.name for c in fk.columns]
        if not any(cols[: len(columns)] == columns for cols in others):
            Index(columns[0], *(table.c[c] for c in columns)).create(conn)
            others.append(columns)


def _only_served_mlflow(engine: AsyncEngine, found: Found) -> None:
    uri = _config_of(engine).safe_uri
    if found.kind is not Kind.MLFLOW:
        _refuse_not_mlflow(engine, found)
    if found.missing:
        raise SchemaOutOfDate(
            f"the database {uri} is an MLflow database at revision {found.revision}: {_mlflow_out_of_date(found, uri)}"
        )


def _refuse_not_mlflow(engine: AsyncEngine, found: Found) -> None:
    what = describe(found, _config_of(engine).safe_uri)
    raise SchemaOutOfDate(
        f"{what}; asyncstore adds or drops its indexes only in an MLflow database "
        "(its own databases get them from their migrations)"
    )


async def _run_read(engine: AsyncEngine, read: Callable[[Connection], _T]) -> _T:
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
            galera = await _lock(conn, backend)
            try:
                await conn.run_sync(fn)
                if backend is Backend.SQLITE:
                    await _check_foreign_keys(conn)
                await conn.commit()
            finally:
                await _unlock(conn, backend, galera)
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


def _refuse_foreign(engine: AsyncEngine, found: Found) -> None:
    """Raise SCHEMA_OUT_OF_DATE when the database is not asyncstore's: another
    program's (:func:`foreign`), or MLflow's, which asyncstore never migrates (and
    serves only when it has what asyncstore uses)."""
    uri = _config_of(engine).safe_uri
    if found.kind is Kind.FOREIGN:
        raise SchemaOutOfDate(f"the database {uri} is at revision {foreign(found.revision)}")
    if found.kind is Kind.MLFLOW:
        why = (
            _mlflow_out_of_date(found, uri) if found.missing
            else "asyncstore serves it as it is (`asyncstore db upgrade --indexes` adds asyncstore's indexes to it)"
        )
        raise SchemaOutOfDate(
            f"the database {uri} is an MLflow database at revision {found.revision} "
            f"({mlflow_schema.release_of(str(found.revision))}), whose schema only MLflow "
            f"migrates: {why}"
        )


async def _check_foreign_keys(conn: AsyncConnection) -> None:
    """SQLite migrates with foreign keys off: refuse to commit rows they would reject."""
    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()
    if broken:
        table, rowid = tuple(broken[0])[:2]
        raise InternalError(
            f"the migration left {len(broken)} row(s) whose foreign keys point nowhere "
            f"(first: table {table}, rowid {rowid}); nothing was changed"
        )


async def _lock(conn: AsyncConnection, backend: Backend) -> bool:
    """Take the migration lock; whether it is a Galera cluster's (see :func:`_unlock`)."""
    if backend is Backend.POSTGRESQL:
        # Session-level: held across the per-revision transactions until unlocked.
        await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_LOCK_KEY})
        await conn.commit()
    elif backend is Backend.MYSQL and await galera_node(conn) is not None:
        await _galera_lock(conn)
        return True
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
    return False


async def _galera_lock(conn: AsyncConnection) -> None:
    """Take the migration lock of a Galera cluster: create :data:`GALERA_LOCK_TABLE`, waiting
    while another node's migrator holds it (at most ``_MYSQL_LOCK_TIMEOUT`` seconds).

    A migrator that died holding it leaves the table behind; it is not taken over (a
    slow migration would be), and the error says how to clear it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _MYSQL_LOCK_TIMEOUT
    # Reads wait for what the cluster committed before them: the revision read under the
    # lock is the one the previous holder left, whichever node it migrated through.
    await conn.exec_driver_sql("SET SESSION wsrep_sync_wait = 1")
    while True:
        try:
            await conn.exec_driver_sql(
                f"CREATE TABLE `{GALERA_LOCK_TABLE}` (holder VARCHAR(64) NOT NULL PRIMARY KEY)"
            )
            await conn.commit()
            return
        except DBAPIError as exc:
            args: tuple[Any, ...] = getattr(exc.orig, "args", ())
            if not args or args[0] != _MYSQL_TABLE_EXISTS:
                raise
            await conn.rollback()
        if loop.time() > deadline:
            raise TemporarilyUnavailable(
                f"another process has held the migration lock for {_MYSQL_LOCK_TIMEOUT}s (the table "
                f"{GALERA_LOCK_TABLE} exists); try again when its upgrade has finished, or drop that "
                "table if no upgrade is running (one that was killed leaves it behind)"
            )
        await asyncio.sleep(0.2)


async def _unlock(conn: AsyncConnection, backend: Backend, galera: bool) -> None:
    """Release the lock :func:`_lock` took (``galera``: what it returned)."""
    if conn.invalidated:
        return  # the server dropped the session, and its locks with it
    await conn.rollback()
    if backend is Backend.POSTGRESQL:
        await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
        await conn.commit()
    elif galera:
        await conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{GALERA_LOCK_TABLE}`")
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
