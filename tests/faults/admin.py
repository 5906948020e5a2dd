"""An admin connection of its own that kills, counts and inspects the store's sessions.

Each call opens a short plain-driver connection (:mod:`tests.dbadmin`'s) in the
running event loop (the test's), so it never shares a connection or a pool with the
store under test.
"""

from __future__ import annotations

from typing import Any

import aiomysql
import asyncpg
from sqlalchemy.engine import make_url

from asyncstore.config import Backend, backend_of
from tests import dbadmin
from tests.helpers import eventually

SESSION_ID_SQL = {
    Backend.POSTGRESQL: "SELECT pg_backend_pid()",
    Backend.MYSQL: "SELECT CONNECTION_ID()",
}
"""What a victim runs inside its transaction to learn the id an admin can kill."""


async def _pg_fetch(uri: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    # The admin session connects to the maintenance database, never to the victim's.
    async with dbadmin.pg_connection(make_url(uri), database="postgres") as conn:
        return list(await conn.fetch(sql, *args))


async def _my_fetch(uri: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    # No default database: the admin session never counts as one of the victim's.
    async with dbadmin.mysql_cursor(make_url(uri).set(database=None)) as cur:
        await cur.execute(sql, args or None)
        return list(await cur.fetchall())


async def kill_session(uri: str, session_id: int) -> None:
    """Kill one server session of ``uri``'s server, as an operator or a failover would.

    PostgreSQL: ``pg_terminate_backend`` waiting up to 5 s for the backend to exit.
    MariaDB: ``KILL CONNECTION``. Either way this returns once the session is no longer
    listed by the server (:func:`wait_session_gone`), so the victim's next round trip
    surely fails.
    """
    backend = backend_of(uri)
    if backend is Backend.POSTGRESQL:
        rows = await _pg_fetch(uri, "SELECT pg_terminate_backend($1, 5000)", session_id)
        assert rows[0][0] is True, f"pg_terminate_backend({session_id}) did not terminate it"
    elif backend is Backend.MYSQL:
        await _my_fetch(uri, f"KILL CONNECTION {int(session_id)}")
    else:
        raise ValueError(f"no server session to kill on {backend.value}")
    await wait_session_gone(uri, session_id)


async def wait_session_gone(uri: str, session_id: int, seconds: float = 10.0) -> None:
    """Wait until ``uri``'s server no longer lists session ``session_id``; fail after ``seconds``."""
    backend = backend_of(uri)
    if backend not in SESSION_ID_SQL:
        raise ValueError(f"no server session on {backend.value}")

    async def listed() -> int:
        if backend is Backend.POSTGRESQL:
            rows = await _pg_fetch(uri, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", session_id)
        else:
            rows = await _my_fetch(uri, "SELECT count(*) FROM information_schema.processlist WHERE id = %s", session_id)
        return int(rows[0][0])

    left = await eventually(listed, 0, seconds)
    assert left == 0, f"session {session_id} still listed by the server {seconds} s after it was killed"


async def kill_all_sessions(uri: str) -> int:
    """Kill every session connected to ``uri``'s database; return how many were killed."""
    backend = backend_of(uri)
    database = make_url(uri).database
    if backend is Backend.POSTGRESQL:
        rows = await _pg_fetch(
            uri,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        return sum(1 for row in rows if row[0])
    if backend is Backend.MYSQL:
        ids = await _my_fetch(
            uri,
            "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
            database,
        )
        for (session_id,) in ids:
            try:
                await _my_fetch(uri, f"KILL CONNECTION {int(session_id)}")
            except aiomysql.OperationalError as exc:  # it left on its own meanwhile
                if exc.args[0] != 1094:  # ER_NO_SUCH_THREAD
                    raise
        return len(ids)
    raise ValueError(f"no server sessions on {backend.value}")


async def sessions(uri: str) -> int:
    """How many sessions are connected to ``uri``'s database (admin sessions excluded)."""
    backend = backend_of(uri)
    database = make_url(uri).database
    if backend is Backend.POSTGRESQL:
        rows = await _pg_fetch(
            uri, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", database
        )
        return int(rows[0][0])
    if backend is Backend.MYSQL:
        rows = await _my_fetch(
            uri,
            "SELECT count(*) FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
            database,
        )
        return int(rows[0][0])
    return 0


async def open_transactions(uri: str) -> int:
    """How many transactions are open on ``uri``'s database right now.

    PostgreSQL: sessions ``idle in transaction`` (or aborted) or active in a
    transaction. MariaDB: InnoDB transactions of sessions using the database.
    SQLite has no server: 0.
    """
    backend = backend_of(uri)
    database = make_url(uri).database
    if backend is Backend.POSTGRESQL:
        rows = await _pg_fetch(
            uri,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() "
            "AND (state LIKE 'idle in transaction%' OR (state = 'active' AND xact_start IS NOT NULL))",
            database,
        )
        return int(rows[0][0])
    if backend is Backend.MYSQL:
        rows = await _my_fetch(
            uri,
            "SELECT count(*) FROM information_schema.innodb_trx t "
            "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id WHERE p.db = %s",
            database,
        )
        return int(rows[0][0])
    return 0
