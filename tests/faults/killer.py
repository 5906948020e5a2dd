"""Kill the store's own server session right after its n-th SQL statement.

:class:`StatementKiller` listens to the engine's ``after_cursor_execute``: it counts
the statements of the operation under test and, after the n-th, kills the session
that ran it from a separate admin connection, so the operation's next round trip
(another statement, or COMMIT after the last one) meets a dead connection. Running an
operation once with ``at=None`` counts its statements, so a test can then kill it at
every statement boundary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncstore.config import Backend
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
        killed: whether the kill happened.
    """

    def __init__(self, engine: AsyncEngine, uri: str, backend: Backend, at: int | None) -> None:
        self.engine, self.uri, self.backend, self.at = engine, uri, backend, at
        self.seen = 0
        self.killed = False

    def _after(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.seen += 1
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
