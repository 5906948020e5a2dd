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
:class:`OneTripConnection` also skips the trip of a rollback when no transaction is
open: the pool rolls back every connection it gets back, after a COMMIT too.
:data:`DBAPI` is the module-like object passed to ``create_async_engine(module=...)``
for every SQLite engine (see :mod:`asyncstore.engines`).
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection, AsyncAdapt_aiosqlite_dbapi

from asyncstore.driver import greenlet_await

_Description = tuple[tuple[Any, ...], ...] | None
_Result = tuple[_Description, list[Any], int, int | None]


def _run(conn: sqlite3.Connection, many: bool, operation: str, parameters: Any) -> _Result:
    """On aiosqlite's thread: a cursor, the statement, all its rows, the cursor closed."""
    cursor = conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


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
        driver: Any = self._adapted._connection  # aiosqlite.Connection; _execute is untyped
        try:
            description, rows, rowcount, lastrowid = greenlet_await(
                driver._execute(lambda: _run(driver._conn, many, operation, parameters))
            )
        except Exception as error:
            self._adapted._handle_exception(error)
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

    __slots__ = ()

    def rollback(self) -> None:
        """Roll back, with no trip when no transaction is open (the pool's reset after a COMMIT)."""
        sqlite = self._connection._connection
        if sqlite is not None and not sqlite.in_transaction:
            return
        super().rollback()

    def cursor(self, server_side: bool = False) -> Any:
        """A one-trip cursor; a server-side (streaming) one is SQLAlchemy's."""
        if server_side:
            return super().cursor(server_side=True)
        return OneTripCursor(self)


class _Dbapi(AsyncAdapt_aiosqlite_dbapi):
    def connect(self, *args: Any, **kwargs: Any) -> OneTripConnection:
        adapted = super().connect(*args, **kwargs)
        return OneTripConnection(self, adapted._connection)


DBAPI = _Dbapi(aiosqlite, sqlite3)
"""The DBAPI module of asyncstore's SQLite engines (``create_async_engine(module=DBAPI)``)."""

__all__ = ["DBAPI", "OneTripConnection", "OneTripCursor"]
