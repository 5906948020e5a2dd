"""SQLAlchemy's aiosqlite adapter, one trip into aiosqlite's thread per statement.

aiosqlite runs every call on its connection's own thread and hands the result back
to the event loop. SQLAlchemy's cursor adapter makes one such trip per driver call:
open a cursor, execute, fetch the rows, close the cursor, so three or four per
statement. Each trip waits its turn in the event loop's queue, which costs little on
an idle loop and a lot on a busy one: under a web app's load a write transaction
held SQLite's write lock several times as long as its statements needed, most of it
waiting for the loop between its own trips.

:class:`OneTripCursor` does a statement's whole cursor life in one trip and keeps the
rows, description, row count and last row id in memory, the way SQLAlchemy's
buffered cursors do anyway. Server-side (streaming) cursors keep SQLAlchemy's own.

:class:`OneTripConnection` saves two more trips per transaction. A ``BEGIN`` is held
back and sent in the trip of the transaction's first statement, before it (a BEGIN
IMMEDIATE still takes the write lock before that statement runs, and a BEGIN DEFERRED
does nothing the statement could see), and a transaction
that ran no statement ends without a trip. A rollback when no transaction is open
makes no trip either: the pool rolls back every connection it gets back, after a
COMMIT too. :meth:`OneTripConnection.trip` is also the way in for asyncstore's own
driver calls (:class:`asyncstore.driver.Driver`), so they too find a held-back BEGIN.
:data:`DBAPI` is the module-like object passed to ``create_async_engine(module=...)``
for every SQLite engine (see :mod:`asyncstore.engines`).
"""

from __future__ import annotations

import collections
import re
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection, AsyncAdapt_aiosqlite_dbapi

from asyncstore.driver import greenlet_await

_Description = tuple[tuple[Any, ...], ...] | None
_Result = tuple[_Description, list[Any], int, int | None]


def _run(
    conn: sqlite3.Connection, begin: str | None, many: bool, operation: str, parameters: Any,
    before: Sequence[tuple[str, Any]] = (),
) -> _Result:
    """On aiosqlite's thread: the held-back BEGIN if any, a cursor, the writes ``before``
    (executemany each), the statement, all its rows, the cursor closed."""
    if begin is not None:
        conn.execute(begin)
    cursor = conn.cursor()
    try:
        for earlier, rows in before:
            _executemany(conn, cursor, earlier, rows)
        if many:
            rowcount = _executemany(conn, cursor, operation, parameters)
        else:
            cursor.execute(operation, parameters)
            rowcount = cursor.rowcount
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, rowcount, cursor.lastrowid
    finally:
        cursor.close()


_ONE_ROW = re.compile(r"\bVALUES\s*(\([\s?,]*\))", re.IGNORECASE)
"""The ``VALUES (?, ?, ...)`` of a one-row INSERT, placeholders only."""


def _executemany(conn: sqlite3.Connection, cursor: sqlite3.Cursor, operation: str, rows: Any) -> int:
    """``cursor.executemany``, sent as multi-row INSERTs where the statement is a one-row
    INSERT of placeholders; the number of rows changed.

    The sqlite3 module lets go of the GIL around every step of a statement and
    executemany steps once per row, so each row has to win the GIL back from the event
    loop's thread: under a busy loop that took up to 5 ms (the interpreter's switch
    interval) per row, and a thousand rows took seconds instead of milliseconds. A
    multi-row INSERT is one step per statement, as many rows as SQLite takes variables.
    SQLite runs its rows one after the other, as executemany does, so ``ON CONFLICT``
    sees the earlier rows of the same statement.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    one_row = _ONE_ROW.search(operation)
    width = one_row.group(1).count("?") if one_row else 0
    if (
        one_row is None
        or width == 0
        or len(rows) < 2
        or _ONE_ROW.search(operation, one_row.end())
        or not operation.lstrip()[:6].upper() == "INSERT"
        or "RETURNING" in operation.upper()
        or not all(isinstance(row, (tuple, list)) and len(row) == width for row in rows)
    ):
        cursor.executemany(operation, rows)
        return cursor.rowcount
    per_statement = max(1, _variable_limit(conn) // width)
    head, values, tail = operation[: one_row.start(1)], one_row.group(1), operation[one_row.end(1) :]
    changed = 0
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        cursor.execute(f"{head}{','.join([values] * len(chunk))}{tail}", [value for row in chunk for value in row])
        changed += cursor.rowcount
    return changed


def _variable_limit(conn: sqlite3.Connection) -> int:
    """How many ``?`` one statement may hold on ``conn``."""
    if sys.version_info >= (3, 11):
        return conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999  # pragma: no cover - Python 3.10


class OneTripCursor:
    """A buffered DBAPI cursor over aiosqlite: each ``execute`` is one trip to its thread."""

    server_side = False

    __slots__ = ("_adapted", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, adapted: OneTripConnection) -> None:
        self._adapted = adapted
        self._rows: collections.deque[Any] = collections.deque()
        self.arraysize = 1
        self.description: _Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    def execute(self, operation: str, parameters: Sequence[Any] | None = None) -> None:
        """Run one statement (rows, if any, are fetched with it)."""
        self._trip(False, operation, () if parameters is None else parameters)

    def executemany(self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per parameter set, in the same trip."""
        self._trip(True, operation, seq_of_parameters)

    def _trip(self, many: bool, operation: str, parameters: Any) -> None:
        adapted = self._adapted
        result: _Result = (None, [], -1, None)
        if many or parameters or not adapted.hold_begin(operation):
            try:
                result = greenlet_await(adapted.trip(many, operation, parameters))
            except Exception as error:
                adapted._handle_exception(error)
        description, rows, rowcount, lastrowid = result
        self.description = description
        self._rows = collections.deque(rows)
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> Any:
        """The next row, or None."""
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        """Up to ``size`` (default ``arraysize``) next rows."""
        rows = self._rows
        return [rows.popleft() for _ in range(min(self.arraysize if size is None else size, len(rows)))]

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def __iter__(self) -> Iterator[Any]:
        while self._rows:
            yield self._rows.popleft()

    def close(self) -> None:
        """Drop the rows (the driver's cursor was closed on its thread already)."""
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        """SQLAlchemy's asyncio results call this after a statement: nothing is left open."""

    def setinputsizes(self, *sizes: Any) -> None:
        """Not used by SQLite."""

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        """Not used by SQLite."""


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's adapted aiosqlite connection, with :class:`OneTripCursor` cursors."""

    __slots__ = ("_begin",)

    def __init__(self, dbapi: Any, connection: Any) -> None:  # an aiosqlite.Connection
        super().__init__(dbapi, connection)
        self._begin: str | None = None

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (or begun and held back)."""
        return self._begin is not None or bool(self._connection.in_transaction)

    def hold_begin(self, operation: str) -> bool:
        """Hold ``operation`` back if it begins a transaction; True when it was held."""
        if not operation.startswith("BEGIN") or self.in_transaction:
            return False
        self._begin = operation
        return True

    async def trip(
        self, many: bool, operation: str, parameters: Any, before: Sequence[tuple[str, Any]] = ()
    ) -> _Result:
        """Run one statement (after the held-back BEGIN and the writes ``before``, each an
        executemany of a statement and its rows) in one trip to aiosqlite's thread."""
        begin, self._begin = self._begin, None
        driver: Any = self._connection  # aiosqlite.Connection; _execute and _conn are untyped
        result: _Result = await driver._execute(
            partial(_run, driver._conn, begin, many, operation, parameters, before)
        )
        return result

    def commit(self) -> None:
        """Commit; a transaction that ran no statement ends without a trip."""
        if self._begin is not None:
            self._begin = None
            return
        super().commit()

    def rollback(self) -> None:
        """Roll back, with no trip when no transaction is open (the pool's reset after a COMMIT)."""
        if self._begin is not None:
            self._begin = None
            return
        sqlite = self._connection._connection
        if sqlite is not None and not sqlite.in_transaction:
            return
        super().rollback()

    def cursor(self, server_side: bool = False) -> Any:
        """A one-trip cursor; a server-side (streaming) one is SQLAlchemy's, after the held-back BEGIN."""
        if server_side:
            if self._begin is not None:
                greenlet_await(self.trip(False, "SELECT 1", ()))
            return super().cursor(server_side=True)
        return OneTripCursor(self)


class _Dbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *args: Any, **kwargs: Any) -> OneTripConnection:
        adapted = super().connect(*args, **kwargs)
        return OneTripConnection(self, adapted._connection)


DBAPI = _Dbapi(aiosqlite, sqlite3)
"""The DBAPI module of asyncstore's SQLite engines (``create_async_engine(module=DBAPI)``)."""

__all__ = ["DBAPI", "OneTripConnection", "OneTripCursor"]
