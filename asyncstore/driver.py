"""The only place that talks to a driver connection directly, besides the adapter in
:mod:`asyncstore.sqlite_dbapi` (which SQLAlchemy itself calls for every SQLite statement).

A few statements are faster sent straight to the driver than through SQLAlchemy, or
cannot be sent through it: PostgreSQL's ``COPY`` (asyncpg's ``copy_records_to_table``),
MySQL/MariaDB's ``LOAD DATA LOCAL INFILE`` (streamed, :func:`mysql_load_data`), the
savepoints around them (:mod:`asyncstore.bulk`) and SQLite's ``executemany`` writes and
lookups (the same trip into aiosqlite's thread as through SQLAlchemy's adapter,
:mod:`asyncstore.sqlite_dbapi`, without SQLAlchemy's statement execution; writes whose
results are not needed ride in the next trip, :meth:`Driver.defer`). :class:`Driver`
makes those calls, inside the transaction SQLAlchemy began on the same connection, and
keeps them visible:

* SQLAlchemy's own ``before_cursor_execute`` and ``after_cursor_execute`` events fire
  for each call, on the :class:`~sqlalchemy.engine.Connection`, with a statement text
  that says what ran (``COPY spans (trace_id, ...) FROM STDIN`` with the number of
  records as parameters; ``executemany`` flagged), so statement counters, tracing
  listeners and fault injectors see them like any other statement;
* with ``echo`` on, the statement and its parameters are logged on the engine's
  logger, the way SQLAlchemy logs its own.

When nothing listens and echo is off, a call is the bare driver call. Listeners run
inside SQLAlchemy's greenlet, as for SQLAlchemy's own statements, so they may await
(``sqlalchemy.util.await_``). As in SQLAlchemy's ``Connection._cursor_execute``, the
events receive no execution context (``None``) and no DBAPI cursor (``None``: the
driver call has none). A statement or parameters that a ``retval=True`` listener
returns are not applied: these calls are not SQL that SQLAlchemy renders. Driver
exceptions propagate unchanged, to be translated by the unit of work; the after-event
fires only when the call succeeded, as SQLAlchemy's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import warnings
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

from asyncpg.exceptions import ConnectionDoesNotExistError
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.util import _repr_params
from sqlalchemy.util import greenlet_spawn

from asyncstore.config import Backend, backend_of
from asyncstore.errors import InvalidState

try:  # SQLAlchemy 2.1 renamed await_only to await_
    from sqlalchemy.util import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as _await

greenlet_await = _await
"""Await a coroutine from sync code running in SQLAlchemy's greenlet (event listeners,
``do_connect``): SQLAlchemy's ``await_`` (``await_only`` before 2.1)."""

T = TypeVar("T")

_STATS = "raw driver call"
"""What the echo log shows where SQLAlchemy shows its compiled-cache statistics."""


class Driver:
    """The driver connection under an :class:`AsyncConnection`, for calls SQLAlchemy's
    events and echo still see.

    Get one with :meth:`of` inside a transaction of the unit of work; it is valid for
    that transaction.
    """

    __slots__ = ("_conn", "_driver", "_pending", "backend")

    def __init__(self, conn: Connection, driver: Any, backend: Backend) -> None:
        self._conn = conn
        self._driver = driver
        self.backend = backend
        self._pending: list[tuple[str, Sequence[Sequence[Any]]]] = []

    @classmethod
    async def of(cls, conn: AsyncConnection) -> Driver:
        """The driver connection (asyncpg, aiosqlite or aiomysql) under ``conn``.

        Raises:
            InvalidState: ``conn`` holds no live driver connection.
        """
        raw = await conn.get_raw_connection()
        sync = conn.sync_connection
        if raw.driver_connection is None or sync is None:  # pragma: no cover - the unit of work holds a live one
            raise InvalidState("no live database connection; run this inside a transaction")
        backend = backend_of(conn.engine.url)
        # SQLite: asyncstore's adapted connection (sqlite_dbapi.OneTripConnection), whose
        # trips send a BEGIN that SQLAlchemy's transaction has held back.
        return cls(sync, raw.dbapi_connection if backend is Backend.SQLITE else raw.driver_connection, backend)

    @property
    def in_transaction(self) -> bool:
        """Whether the driver connection is inside a transaction (SQLite only knows)."""
        if self.backend is Backend.SQLITE:
            return bool(self._driver.in_transaction)
        return True  # asyncpg and aiomysql do not say; the unit of work began one

    async def execute(self, statement: str, parameters: Sequence[Any] = ()) -> None:
        """Run one statement whose result is not needed (a savepoint, a pragma)."""
        if self.backend is Backend.POSTGRESQL:
            call: Callable[[], Awaitable[Any]] = partial(self._driver.execute, statement, *parameters)
        elif self.backend is Backend.SQLITE:
            await self._trip(False, statement, tuple(parameters))
            return
        else:
            call = partial(_mysql_execute, self._driver, statement, parameters)
        await self._observed(statement, tuple(parameters), False, call)

    async def fetchall(self, statement: str, parameters: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a query and return its rows (SQLite)."""
        self._require(Backend.SQLITE)
        _, rows, _, _ = await self._trip(False, statement, tuple(parameters))
        return [tuple(row) for row in rows]

    def defer(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """Queue an ``executemany`` whose result is not needed (SQLite): it is sent, in
        order, in the trip of this driver's next statement, or by :meth:`flush`.

        Each trip into aiosqlite's thread waits for the thread, then for the event
        loop, a millisecond or more each on a busy loop, while the transaction holds
        SQLite's write lock: writes sent together wait once. A deferred write that
        fails raises from the call whose trip carried it, in the same transaction;
        one never sent (the caller failed or was cancelled first) is dropped with the
        transaction's rollback.
        """
        self._require(Backend.SQLITE)
        self._pending.append((statement, rows))

    async def flush(self) -> None:
        """Send the deferred writes (SQLite; one trip), if any."""
        if self._pending:
            statement, rows = self._pending.pop()
            await self._trip(True, statement, rows)

    async def _trip(self, many: bool, statement: str, parameters: Any) -> Any:
        """One trip into aiosqlite's thread: the deferred writes, then the statement."""
        before, self._pending = self._pending, []
        call = partial(self._driver.trip, many, statement, parameters, before)
        return await self._observed(statement, parameters, many, call, before)

    async def copy(self, table: str, columns: Sequence[str], records: Sequence[Sequence[Any]]) -> None:
        """COPY ``records`` into ``table`` (PostgreSQL, binary format)."""
        self._require(Backend.POSTGRESQL)
        statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT binary)"
        call = partial(_pg_copy, self._driver, table, list(columns), records)
        await self._observed(statement, {"records": len(records)}, False, call)

    async def load_data(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, replace: bool = False
    ) -> tuple[int, int]:
        """LOAD DATA LOCAL INFILE of ``rows`` (MySQL/MariaDB, streamed: :func:`mysql_load_data`).

        Returns the affected rows and the server's warnings.
        """
        self._require(Backend.MYSQL)
        statement = load_data_statement(table, columns, "<stream>", replace=replace)
        call = partial(mysql_load_data, self._driver, table, columns, rows, replace=replace)
        return await self._observed(statement, {"rows": len(rows)}, False, call)

    def _require(self, *backends: Backend) -> None:
        if self.backend not in backends:
            raise InvalidState(
                f"this driver call is not made on {self.backend.value}; send the statement through SQLAlchemy"
            )

    async def _observed(
        self, statement: str, parameters: Any, many: bool, call: Callable[[], Awaitable[T]],
        before: Sequence[tuple[str, Any]] = (),
    ) -> T:
        """``await call()``, with SQLAlchemy's cursor events and echo around it when they
        are on: for the executemany statements ``before`` it (sent in the same call), then for it."""
        conn = self._conn
        listened = (conn._has_events or conn.engine._has_events) and bool(
            conn.dispatch.before_cursor_execute or conn.dispatch.after_cursor_execute
        )
        if not listened and not conn._echo:
            return await call()  # the fast path: nothing to tell anyone
        statements = [*((s, rows, True) for s, rows in before), (statement, parameters, many)]
        return await greenlet_spawn(_in_greenlet, conn, listened, statements, call)


def _in_greenlet(
    conn: Connection, listened: bool, statements: Sequence[tuple[str, Any, bool]], call: Callable[[], Awaitable[T]]
) -> T:
    """What ``Connection._cursor_execute`` does around a DBAPI call, around a driver call
    that sends ``statements`` (statement, parameters, executemany or not)."""
    for statement, parameters, many in statements:
        if listened:
            for fn in conn.dispatch.before_cursor_execute:
                fn(conn, None, statement, parameters, None, many)
        if conn._echo:
            conn._log_info(statement)
            if conn.engine.hide_parameters:
                conn._log_info("[%s] [SQL parameters hidden due to hide_parameters=True]", _STATS)
            else:
                conn._log_info("[%s] %r", _STATS, _repr_params(parameters, batches=10, ismulti=many))
    result = _await(call())
    if listened:
        for statement, parameters, many in statements:
            conn.dispatch.after_cursor_execute(conn, None, statement, parameters, None, many)
    return result


async def _pg_copy(driver: Any, table: str, columns: list[str], records: Sequence[Sequence[Any]]) -> None:
    """asyncpg's ``copy_records_to_table``, failing when the connection is lost mid-way.

    asyncpg (0.32) never wakes a COPY that waits for the socket to drain when the server
    drops the session: the call would hang forever. Its termination listener does fire,
    so the COPY is abandoned then, with the error asyncpg raises for a lost connection
    elsewhere.
    """
    lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_lost(_: object) -> None:
        if not lost.done():
            lost.set_result(None)

    copying = asyncio.ensure_future(driver.copy_records_to_table(table, records=records, columns=columns))
    driver.add_termination_listener(on_lost)
    try:
        await asyncio.wait((copying, lost), return_when=asyncio.FIRST_COMPLETED)
    finally:
        driver.remove_termination_listener(on_lost)
        lost.cancel()
        if not copying.done():  # the connection is gone, or our caller was cancelled
            copying.cancel()
            copying.add_done_callback(_consume)
    if not copying.done():  # abandoned above: the connection was lost first
        raise ConnectionDoesNotExistError("the connection was closed in the middle of COPY")
    copying.result()


# --- MySQL/MariaDB: LOAD DATA LOCAL INFILE, streamed --------------------------------------

LOAD_SLICE = 500
"""Rows formatted at a time by :func:`mysql_load_data`'s feeding thread."""


def _load_text(value: str) -> str:
    """``value`` with LOAD DATA's escapes (``FIELDS ESCAPED BY '\\'``): backslash, tab, newline,
    carriage return, NUL; most text has none of them and is returned as it is."""
    if not ("\\" in value or "\t" in value or "\n" in value or "\r" in value or "\0" in value):
        return value
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        .replace("\0", "\\0")
    )


def _load_field(value: Any) -> str:
    if value.__class__ is str:
        return _load_text(value)
    if value is None:
        return "\\N"
    if value is True or value is False:
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"LOAD DATA cannot carry the float {value!r}")
        return repr(value)
    return _load_text(str(value))


def load_data_text(rows: Sequence[Sequence[Any]]) -> bytes:
    """``rows`` in LOAD DATA's default format: tab-separated fields, one row per line, UTF-8.

    None is ``\\N``; booleans 1 and 0; numbers as Python writes them (``repr`` of a
    float reads back as the same double); text with backslash, tab, newline, carriage
    return and NUL escaped. A float that is not finite cannot be stored by MySQL and
    raises ValueError.
    """
    return "".join(["\t".join(map(_load_field, row)) + "\n" for row in rows]).encode("utf-8")


def load_data_statement(table: str, columns: Sequence[str], path: str, *, replace: bool = False) -> str:
    """``LOAD DATA LOCAL INFILE '<path>' [REPLACE] INTO TABLE <table> CHARACTER SET utf8mb4 (<columns>)``."""
    quoted = ", ".join(f"`{c}`" for c in columns)
    mode = " REPLACE" if replace else ""
    return f"LOAD DATA LOCAL INFILE '{path}'{mode} INTO TABLE `{table}` CHARACTER SET utf8mb4 ({quoted})"


async def mysql_load_data(
    connection: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, replace: bool = False
) -> tuple[int, int]:
    """LOAD DATA LOCAL INFILE of ``rows`` into ``table`` through aiomysql ``connection``.

    The rows never touch a disk: a thread of the call's own formats them, :data:`LOAD_SLICE`
    at a time, into an OS pipe while aiomysql, which opens the "file" the server asks
    for, reads the pipe's other end (``/dev/fd/N``, Linux), so memory holds a slice
    and the pipe's buffer whatever the batch's size. The connection must have been opened with
    ``local_infile=True``, and the server must allow it (``local_infile``); else the
    server's error propagates. MySQL's LOCAL keyword implies IGNORE: a row whose key
    exists already is skipped, and a value the column cannot hold is changed, each
    with a warning, not an error; with ``replace`` a row whose key exists replaces
    the stored one.

    Returns:
        The affected rows (a replaced row counts twice) and the number of warnings.
    """
    read_end, write_end = os.pipe()
    loop = asyncio.get_running_loop()
    feeding: asyncio.Future[None] = loop.create_future()

    def feed() -> None:
        failure: BaseException | None = None
        try:
            with os.fdopen(write_end, "wb") as pipe:
                for start in range(0, len(rows), LOAD_SLICE):
                    pipe.write(load_data_text(rows[start : start + LOAD_SLICE]))
        except BrokenPipeError:  # the statement failed and the reading end was closed
            pass
        except BaseException as exc:  # handed to the awaiting task
            failure = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody awaits
            loop.call_soon_threadsafe(_settle, feeding, failure)

    # A thread of its own, not the loop's default executor: the feeder blocks while the
    # pipe is full, and aiomysql reads the pipe in that executor, so loads as many as its
    # threads would each hold one, waiting for reads that never get one.
    threading.Thread(target=feed, name="asyncstore-load-data", daemon=True).start()
    statement = load_data_statement(table, columns, f"/dev/fd/{read_end}", replace=replace)
    try:
        async with connection.cursor() as cursor:
            with warnings.catch_warnings():  # aiomysql re-raises each server warning as a Python one
                warnings.simplefilter("ignore")
                affected = int(await cursor.execute(statement))
            return affected, int(cursor._result.warning_count if cursor._result is not None else 0)
    finally:
        os.close(read_end)
        await feeding  # a row that could not be formatted raises here: the caller rolls back


async def _mysql_execute(connection: Any, statement: str, parameters: Sequence[Any]) -> None:
    """One statement through an aiomysql connection (``%s`` placeholders when there are parameters)."""
    async with connection.cursor() as cursor:
        await cursor.execute(statement, tuple(parameters) or None)


def _settle(future: asyncio.Future[None], failure: BaseException | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome, so asyncio does not report it as never retrieved."""
    if not task.cancelled():
        task.exception()



__all__ = ["Driver"]
