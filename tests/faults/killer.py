"""Kill the store's own server session right after, or in the middle of, one of its statements.

:class:`StatementKiller` listens to the engine's ``after_cursor_execute``: it counts
the statements of the operation under test and, after the n-th, kills the session
that ran it from a separate admin connection, so the operation's next round trip
(another statement, or COMMIT after the last one) meets a dead connection. Running an
operation once with ``at=None`` counts its statements, so a test can then kill it at
every statement boundary.

:class:`MidStatementKiller` listens to ``before_cursor_execute``: when a statement
starting with a given prefix begins, it kills the session while the server is still
running that statement.

Both see the statements the store sends straight to the driver (PostgreSQL's COPY
and savepoints, SQLite's executemany), which :mod:`asyncstore.driver` reports through
the same events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncstore.config import Backend, backend_of
from tests import dbadmin
from tests.faults import admin

try:  # SQLAlchemy 2.1 renamed await_only to await_
    from sqlalchemy.util import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util import await_only as _await


def _session_id(backend: Backend, driver_connection: Any) -> int:
    if backend is Backend.POSTGRESQL:
        return int(driver_connection.get_server_pid())  # asyncpg
    if backend is Backend.MYSQL:
        return int(driver_connection.thread_id())  # aiomysql
    raise ValueError(f"no server session on {backend.value}")


class StatementKiller:
    """Count statements; kill the session after statement number ``at`` (1-based).

    Attributes:
        seen: statements executed since the killer was armed.
        statements: their SQL, in order.
        killed: whether the kill happened.
    """

    def __init__(self, engine: AsyncEngine, uri: str, backend: Backend, at: int | None) -> None:
        self.engine, self.uri, self.backend, self.at = engine, uri, backend, at
        self.seen = 0
        self.statements: list[str] = []
        self.killed = False

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen += 1
        self.statements.append(statement.strip())
        if self.at is not None and self.seen == self.at and not self.killed:
            self.killed = True
            session = _session_id(self.backend, conn.connection.driver_connection)
            # We are inside SQLAlchemy's greenlet: the admin call runs on the same loop.
            _await(admin.kill_session(self.uri, session))

    @contextlib.contextmanager
    def armed(self) -> Iterator[StatementKiller]:
        """Listen for the duration of the block."""
        event.listen(self.engine.sync_engine, "after_cursor_execute", self._after)
        try:
            yield self
        finally:
            event.remove(self.engine.sync_engine, "after_cursor_execute", self._after)


class MidStatementKiller:
    """Kill the session (PostgreSQL, MySQL/MariaDB) while it runs the first statement starting with ``prefix``.

    When the statement begins (``before_cursor_execute``), a task on the test's loop
    watches the session from an admin connection until the server shows it running a
    statement starting with ``server_prefix``, then terminates it, as an operator or a
    failover would.

    Attributes:
        started: whether the statement began.
        finished: whether it completed (its ``after_cursor_execute`` fired).
        killed: whether the session was terminated while the server showed the statement
            running.
    """

    def __init__(self, engine: AsyncEngine, uri: str, prefix: str, server_prefix: str) -> None:
        self.engine, self.uri, self.prefix, self.server_prefix = engine, uri, prefix, server_prefix
        self.started = self.finished = self.killed = False
        self._task: asyncio.Task[None] | None = None

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.started or not statement.lstrip().startswith(self.prefix):
            return
        self.started = True
        backend = backend_of(make_url(self.uri))
        session = _session_id(backend, conn.connection.driver_connection)
        watch = self._kill_while_running if backend is Backend.POSTGRESQL else self._kill_while_running_mysql
        self._task = asyncio.get_running_loop().create_task(watch(session))

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.started and statement.lstrip().startswith(self.prefix):
            self.finished = True

    async def _kill_while_running(self, session: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0  # the statement failed some other way: stop watching
        async with dbadmin.pg_connection(make_url(self.uri), database="postgres") as pg:
            while not self.finished and loop.time() < deadline:
                query = await pg.fetchval(
                    "SELECT query FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", session
                )
                if query is not None and query.lstrip().upper().startswith(self.server_prefix.upper()):
                    self.killed = bool(await pg.fetchval("SELECT pg_terminate_backend($1, 5000)", session))
                    return
                await asyncio.sleep(0.001)

    async def _kill_while_running_mysql(self, session: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0
        async with dbadmin.mysql_cursor(make_url(self.uri)) as cur:
            while not self.finished and loop.time() < deadline:
                await cur.execute(
                    "SELECT INFO FROM information_schema.PROCESSLIST WHERE ID = %s AND COMMAND = 'Query'", (session,)
                )
                row = await cur.fetchone()
                if row is not None and row[0] and row[0].lstrip().upper().startswith(self.server_prefix.upper()):
                    await cur.execute(f"KILL {int(session)}")
                    self.killed = True
                    return
                await asyncio.sleep(0.001)

    async def wait(self) -> None:
        """Wait for the watching task to end (it ends once the statement finished or was killed)."""
        if self._task is not None:
            await self._task

    @contextlib.contextmanager
    def armed(self) -> Iterator[MidStatementKiller]:
        """Listen for the duration of the block."""
        sync = self.engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._before)
        event.listen(sync, "after_cursor_execute", self._after)
        try:
            yield self
        finally:
            event.remove(sync, "before_cursor_execute", self._before)
            event.remove(sync, "after_cursor_execute", self._after)
