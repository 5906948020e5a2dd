"""The engine cache: one ``AsyncEngine`` per (event loop, URI, options).

An engine's pooled connections belong to the event loop that opened them, so the
cache is keyed by the running loop: a second ``asyncio.run`` (or a test with its own
loop) gets an engine of its own, and the engines of a closed loop are dropped, never
handed out again. Each engine gets per-dialect connection set-up here and nowhere
else, and connects with bounded retry and exponential backoff.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import sqlite3
import ssl
import weakref
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote

import sqlalchemy.pool
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState
from sqlalchemy.util import asbool, greenlet_spawn

from asyncstore import sqlite_checkpoint, sqlite_dbapi
from asyncstore.config import Backend, StoreConfig, is_sqlite_memory
from asyncstore.dialect import sqlite_regexp
from asyncstore.driver import greenlet_await
from asyncstore.errors import ConfigurationError, DatabaseConnectError, InternalError, InvalidState
from asyncstore.retry import Backoff, retrying
from asyncstore.translate import connect_failure_is_transient, mark_connect_failure, translate

log = logging.getLogger(__name__)

MIN_SQLITE_VERSION = (3, 35, 0)
"""RETURNING arrived in SQLite 3.35; generated columns in 3.31."""

_MAX_BACKOFF = 5.0  # seconds: long enough to ride out a restart, short enough to notice


@dataclasses.dataclass
class EngineState:
    """What asyncstore keeps beside each engine it created."""

    config: StoreConfig
    backend: Backend
    write_lock: asyncio.Lock | None
    """SQLite: one writer at a time in this process, so writers queue on the lock
    instead of spinning in SQLite's busy handler. None on server databases."""
    serialize_all: bool
    """In-memory SQLite: every transaction (reads too) shares the one connection."""
    write_queue: collections.deque[Any] = dataclasses.field(default_factory=collections.deque)
    """SQLite: grouped write calls waiting for the next group commit (see
    :meth:`asyncstore.uow.UnitOfWork.run_grouped`)."""
    load_data: bool = True
    """MySQL/MariaDB: whether bulk writes try LOAD DATA LOCAL INFILE (the
    ``mysql_local_infile`` setting, until the server or account refuses it once)."""
    writer: asyncio.Task[None] | None = None
    """SQLite: the task writing the queued groups while there are any."""
    checkpoint: weakref.finalize[Any, Any] | None = None
    """SQLite file: releases the engine's share of the file's background checkpointer
    (:mod:`asyncstore.sqlite_checkpoint`); runs once, when the engine is first disposed
    or garbage-collected, or its loop found closed. None without one."""
    galera: tuple[int, int] | None = None
    """MySQL/MariaDB on a Galera node: its index in the cluster and the cluster's size
    (:func:`asyncstore.dialect.galera_node`, read when a store opens); else None."""


_engines: dict[asyncio.AbstractEventLoop, dict[StoreConfig, AsyncEngine]] = {}
_states: weakref.WeakKeyDictionary[Engine, EngineState] = weakref.WeakKeyDictionary()
# One suspended async generator per loop that has cached engines (see _watch_loop).
_watchers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = {}


def get_engine(uri: str | URL | None = None, *, config: StoreConfig | None = None, **options: Any) -> AsyncEngine:
    """Return the one ``AsyncEngine`` for the running event loop, URI and options.

    Args:
        uri: database URI; defaults to ``ASYNCSTORE_DATABASE_URI`` or ``sqlite:///asyncstore.db``.
        config: a ready :class:`StoreConfig` (then ``uri`` and ``options`` must be empty).
        **options: pool options, see :class:`StoreConfig`.

    Raises:
        InvalidState: called with no running event loop.
        ConfigurationError: a bad URI or option.

    Example::

        engine = get_engine("postgresql://postgres@127.0.0.1/test", pool_size=5)
    """
    if config is None:
        config = StoreConfig.load(uri, **options)
    elif uri is not None or options:
        raise InvalidState("get_engine takes either config= or uri/options, not both")
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise InvalidState(
            "get_engine needs a running event loop: call it from async code (inside asyncio.run)"
        ) from None
    _drop_closed_loops()
    per_loop = _engines.setdefault(loop, {})
    engine = per_loop.get(config)
    if engine is None:
        engine = per_loop[config] = _create_engine(config)
        _watch_loop(loop)
    return engine


def _watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Dispose the loop's engines when the loop shuts down, while it can still run I/O.

    ``asyncio.run``, ``asyncio.Runner`` (pytest-asyncio, anyio) and uvloop call
    ``loop.shutdown_asyncgens()`` before closing the loop: that closes every suspended
    async generator of the loop, so a generator parked here runs its ``finally``
    (dispose) at the right moment. Without this the connections of a finished
    ``asyncio.run`` could only be dropped after the loop closed, unclosed.
    """
    if loop in _watchers:
        return
    watcher = _dispose_at_shutdown()
    try:
        # Start it (to its first yield) without awaiting: the body awaits nothing
        # before the yield, so one send() runs it there; this registers it with the
        # loop's async-generator hooks.
        watcher.__anext__().send(None)
    except StopIteration:
        _watchers[loop] = watcher


async def _dispose_at_shutdown() -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        _watchers.pop(loop, None)
        for engine in list(_engines.pop(loop, {}).values()):
            try:
                await dispose_engine(engine)
            except Exception:  # the loop is ending: report, do not raise into shutdown
                log.warning("disposing an engine at loop shutdown failed", exc_info=True)


def engine_state(engine: AsyncEngine) -> EngineState:
    """The :class:`EngineState` of an engine made by :func:`get_engine` (or :func:`create_engine`)."""
    state = _states.get(engine.sync_engine)
    if state is None:
        raise InvalidState("this engine was not created by asyncstore; use asyncstore.get_engine()")
    return state


async def dispose_engines() -> None:
    """Close every cached engine of the running event loop and forget them."""
    loop = asyncio.get_running_loop()
    for engine in _engines.pop(loop, {}).values():
        await dispose_engine(engine)
    _drop_closed_loops()


async def dispose_engine(engine: AsyncEngine) -> None:
    """Close one engine's pool and remove it from the cache."""
    for per_loop in _engines.values():
        for key, cached in list(per_loop.items()):
            if cached is engine:
                del per_loop[key]
    _states.pop(engine.sync_engine, None)
    await engine.dispose()


def _drop_closed_loops() -> None:
    for loop in [lp for lp in _watchers if lp.is_closed()]:
        del _watchers[loop]
    for loop in [lp for lp in _engines if lp.is_closed()]:
        for engine in _engines.pop(loop).values():
            # The loop was closed without shutdown_asyncgens() (not by asyncio.run):
            # its connections cannot be closed any more, only forgotten. The drivers
            # warn (ResourceWarning) when they are garbage-collected.
            state = _states.pop(engine.sync_engine, None)
            if state is not None and state.checkpoint is not None:
                state.checkpoint()
            log.warning(
                "dropped the engine for %s: its event loop was closed before the engine was "
                "disposed; call `await asyncstore.dispose_engines()` before closing a loop",
                engine.url.render_as_string(hide_password=True),
            )


def create_engine(config: StoreConfig) -> AsyncEngine:
    """Create an engine for ``config`` without caching it (the caller disposes it)."""
    return _create_engine(config)


def _create_engine(config: StoreConfig) -> AsyncEngine:
    url = config.url
    backend = config.backend
    kwargs: dict[str, Any] = {
        "echo": config.echo,
        "pool_pre_ping": config.pool_pre_ping,
        "pool_recycle": config.pool_recycle,
        # asyncstore builds all statements from a small fixed set, so the compiled
        # cache stays small; the default size (500) is plenty.
    }
    if config.poolclass is not None:
        kwargs["poolclass"] = getattr(sqlalchemy.pool, config.poolclass)
    if config.poolclass in (None, "AsyncAdaptedQueuePool") and not is_sqlite_memory(url):
        kwargs.update(
            pool_size=config.pool_size,
            max_overflow=config.max_overflow,
            pool_timeout=config.pool_timeout,
        )
    connect_args: dict[str, Any] = {}
    if backend is Backend.SQLITE:
        _check_sqlite_version()
        # sqlite3's own timeout is the busy timeout, in seconds.
        connect_args["timeout"] = config.sqlite_busy_timeout_ms / 1000
        kwargs["module"] = sqlite_dbapi.DBAPI  # one trip into aiosqlite's thread per statement
    elif backend is Backend.POSTGRESQL:
        connect_args["server_settings"] = {"application_name": "asyncstore"}
    elif backend is Backend.MYSQL:
        # READ COMMITTED takes no gap locks, the main source of deadlocks between
        # concurrent upserts into the same index range under REPEATABLE READ.
        kwargs["isolation_level"] = "READ COMMITTED"
        connect_args["init_command"] = (
            "SET SESSION time_zone = '+00:00', "
            "sql_mode = IF(@@SESSION.sql_mode = '', 'STRICT_ALL_TABLES', "
            "CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES'))"
        )
        if config.mysql_ssl_ca or config.mysql_ssl_cert:
            connect_args["ssl"] = _mysql_ssl_context(config)
        connect_args["local_infile"] = config.mysql_local_infile
        kwargs["pool_reset_on_return"] = None  # _install_mysql_reset rolls back when needed
    engine = create_async_engine(url, connect_args=connect_args, **kwargs)
    memory = is_sqlite_memory(url)
    state = _states[engine.sync_engine] = EngineState(
        config=config,
        backend=backend,
        write_lock=asyncio.Lock() if backend is Backend.SQLITE else None,
        serialize_all=memory,
        load_data=backend is Backend.MYSQL and config.mysql_local_infile,
    )
    if backend is Backend.SQLITE and not memory and url.database:
        _install_sqlite_parent_dir(engine, url.database)
    _install_connect_retry(engine, config)
    if backend is Backend.SQLITE:
        path = sqlite_file(url)
        if path is not None and config.sqlite_checkpoint_interval > 0:
            checkpointer = sqlite_checkpoint.acquire(path, config.sqlite_checkpoint_interval)
            release = state.checkpoint = weakref.finalize(engine.sync_engine, sqlite_checkpoint.release, checkpointer)
            # Whoever disposes the engine (the cache, a store, a command), it lets go;
            # a finalizer runs once.
            event.listen(engine.sync_engine, "engine_disposed", lambda _engine: release())
        _install_sqlite_setup(
            engine, wal=not memory, busy_timeout_ms=config.sqlite_busy_timeout_ms,
            autocheckpoint=sqlite_checkpoint.BACKSTOP_PAGES if state.checkpoint is not None else None,
        )
    if backend is Backend.MYSQL:
        _install_mysql_reset(engine)
    log.debug("created engine for %s", config.safe_uri)
    return engine


def _mysql_ssl_context(config: StoreConfig) -> ssl.SSLContext:
    """The TLS context for MySQL from the CA, certificate and key files of the config."""
    try:
        context = ssl.create_default_context(cafile=config.mysql_ssl_ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"mysql_ssl_ca (ASYNCSTORE_MYSQL_SSL_CA)={config.mysql_ssl_ca!r} could not be loaded "
            f"({exc}); expected a PEM file of CA certificates"
        ) from exc
    if config.mysql_ssl_cert:
        try:
            context.load_cert_chain(config.mysql_ssl_cert, config.mysql_ssl_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"mysql_ssl_cert/mysql_ssl_key (ASYNCSTORE_MYSQL_SSL_CERT/_KEY)="
                f"{config.mysql_ssl_cert!r}/{config.mysql_ssl_key!r} could not be loaded ({exc}); "
                "expected a PEM client certificate and its private key"
            ) from exc
    return context


def _check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise InternalError(
            f"SQLite {sqlite3.sqlite_version} is too old: asyncstore needs "
            f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer (RETURNING, generated columns); "
            "use a Python built against a newer SQLite"
        )


def _install_sqlite_parent_dir(engine: AsyncEngine, database: str) -> None:
    """Create the SQLite file's folder on the first connection, not when the engine is built.

    An engine that never connects, or one used only by the read-only calls (which open
    the file through :func:`create_readonly_engine`), then leaves no folder behind
    for a mistyped path. The listener returns None, so the connect-retry listener
    registered after it still makes the connection.
    """
    folder = os.path.dirname(os.path.abspath(database)) or "."

    @event.listens_for(engine.sync_engine, "do_connect")
    def _make_folder(dialect: Dialect, conn_rec: ConnectionPoolEntry, cargs: Any, cparams: Any) -> None:
        os.makedirs(folder, exist_ok=True)


def _install_connect_retry(engine: AsyncEngine, config: StoreConfig) -> None:
    """Retry failed connection attempts with exponential backoff (:func:`retrying`).

    SQLAlchemy calls ``do_connect`` inside its greenlet: the retry loop is awaited
    on the event loop (:data:`~asyncstore.driver.greenlet_await`) and each attempt
    runs the driver's connect in a greenlet of its own, so every wait is an
    ``await``, never a blocking sleep.
    Permanent failures (credentials, unknown database) are raised at once.
    """
    backoff = Backoff(base=config.connect_backoff, cap=_MAX_BACKOFF)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Dialect, conn_rec: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
        def log_retry(exc: Exception, retry: int, delay: float) -> None:
            log.warning(
                "connecting to %s failed (%s); attempt %d of %d, next in %.2fs",
                config.safe_uri,
                translate(exc).message,
                retry,
                config.connect_retries + 1,
                delay,
            )

        try:
            return greenlet_await(
                retrying(
                    lambda: greenlet_spawn(dialect.connect, *cargs, **cparams),
                    retries=config.connect_retries,
                    backoff=backoff,
                    should_retry=connect_failure_is_transient,
                    on_retry=log_retry,
                )
            )
        except Exception as exc:
            mark_connect_failure(exc)  # the unit of work does not retry it again
            raise


def _install_mysql_reset(engine: AsyncEngine) -> None:
    """MySQL: a connection returned to the pool is rolled back only if a transaction is open on it.

    SQLAlchemy's pool rolls back every connection it gets back, and aiomysql sends
    that ROLLBACK to the server even right after a COMMIT: a round trip per
    transaction, and on a session the server killed after its COMMIT, a failed
    rollback that the pool logs as an error. Every server reply says whether a
    transaction is open (``SERVER_STATUS_IN_TRANS``, read by aiomysql's
    ``get_transaction_status``); the pool's own reset is off for MySQL engines and
    this one rolls back only then. A connection that died after its COMMIT goes back
    to the pool and is replaced at its next checkout (``pool_pre_ping``) or, failing
    that, by the unit of work's retry.
    """

    @event.listens_for(engine.sync_engine, "reset")
    def _reset(dbapi_connection: Any, conn_rec: ConnectionPoolEntry, state: PoolResetState) -> None:
        if state.transaction_was_reset or state.terminate_only or not state.asyncio_safe:
            return
        if dbapi_connection._connection.get_transaction_status():
            dbapi_connection.rollback()


def _install_sqlite_setup(
    engine: AsyncEngine, *, wal: bool, busy_timeout_ms: int, autocheckpoint: int | None = None
) -> None:
    """Per-connection SQLite set-up and explicit BEGIN handling.

    ``autocheckpoint``: the connections' ``wal_autocheckpoint`` (pages) when a
    background checkpointer runs; None keeps SQLite's default.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, conn_rec: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")  # cascades and references are enforced
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            # LIKE is case-sensitive on PostgreSQL and on MySQL with utf8mb4_bin: same here.
            cursor.execute("PRAGMA case_sensitive_like = ON")
            # SQLite has the REGEXP operator but no function behind it (trace search's RLIKE).
            dbapi_connection.create_function("regexp", 2, sqlite_regexp, deterministic=True)
            if wal:
                # Readers never block the writer and the writer never blocks readers.
                cursor.execute("PRAGMA journal_mode = WAL")
                # In WAL mode NORMAL is durable against application crashes and much faster.
                cursor.execute("PRAGMA synchronous = NORMAL")
                if autocheckpoint is not None:  # checkpoints run in a thread; commits only as a backstop
                    cursor.execute(f"PRAGMA wal_autocheckpoint = {int(autocheckpoint)}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A write transaction takes the write lock when it begins (BEGIN IMMEDIATE):
        # SQLite does not call its busy handler when a read transaction tries to
        # upgrade to a write one, it fails at once with "database is locked".
        mode = conn.get_execution_options().get("asyncstore_sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def sqlite_file(url: URL) -> str | None:
    """The absolute path of the SQLite file that ``url`` opens read-write, else None.

    None for a server database, an in-memory database, and a SQLite ``uri=true`` URL
    (such as the read-only URL of :func:`create_readonly_engine`).
    """
    if url.get_backend_name() != "sqlite" or is_sqlite_memory(url) or asbool(url.query.get("uri", False)):
        return None
    return os.path.abspath(url.database or "")


def create_readonly_engine(config: StoreConfig) -> AsyncEngine:
    """An engine for calls that only look: it creates no file, directory or database.

    A SQLite file is opened read-only (``mode=ro``), without pooling, and its
    connections skip the set-up that writes (``journal_mode = WAL``). Any other URL
    gets the usual engine: connecting to a server creates nothing, and an unknown
    database is refused. The caller disposes the engine.

    Raises:
        DatabaseConnectError: the SQLite file does not exist ("no database at PATH").
    """
    path = sqlite_file(config.url)
    if path is None:
        return _create_engine(config)
    if not os.path.isfile(path):
        raise DatabaseConnectError(
            f"no database at {path}; check the path, or create the database with `asyncstore db upgrade`"
        )
    _check_sqlite_version()
    url = config.url.set(database=f"file:{quote(path)}").update_query_dict({"mode": "ro", "uri": "true"})
    engine = create_async_engine(
        url,
        echo=config.echo,
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"timeout": config.sqlite_busy_timeout_ms / 1000},
        module=sqlite_dbapi.DBAPI,
    )
    _states[engine.sync_engine] = EngineState(
        config=config, backend=Backend.SQLITE, write_lock=asyncio.Lock(), serialize_all=False
    )
    _install_sqlite_setup(engine, wal=False, busy_timeout_ms=config.sqlite_busy_timeout_ms)
    return engine
