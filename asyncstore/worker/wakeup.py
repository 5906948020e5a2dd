"""Wake-ups of an idle worker: PostgreSQL ``LISTEN`` on the queue's channel.

``store.jobs.create``, ``create_many``, ``release`` and ``reset`` run ``pg_notify``
in their transaction (:func:`asyncstore.jobs.sql.notify`), so the notification
arrives when the new jobs are committed. The listener holds one connection of the
store's pool, outside any transaction (a connection idle in a transaction would
hold notifications back), and calls ``on_job`` with the job name of each. Other
backends have no such channel; there the worker polls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore.config import Backend
from asyncstore.jobs.sql import NOTIFY_CHANNEL
from asyncstore.store import AsyncStore

log = logging.getLogger("asyncstore.worker")


class Listener:
    """``LISTEN asyncstore_jobs`` on a connection of the store's pool, until :meth:`close`."""

    def __init__(self, conn: AsyncConnection, driver: Any, callback: Callable[..., None]) -> None:
        self._conn, self._driver, self._callback = conn, driver, callback
        self.alive = True
        driver.add_termination_listener(self._terminated)

    def _terminated(self, _connection: Any) -> None:
        log.warning("the LISTEN connection was lost; polling until it is back")
        self.alive = False

    async def close(self) -> None:
        """Stop listening and give the connection back (or drop it, when it broke)."""
        try:
            if self.alive:
                await self._driver.remove_listener(NOTIFY_CHANNEL, self._callback)
                self._driver.remove_termination_listener(self._terminated)
                await self._conn.close()
            else:
                await self._conn.invalidate()
        except Exception as exc:  # closing a broken connection: nothing left to save
            log.debug("closing the LISTEN connection: %s", exc)


async def listen(store: AsyncStore, on_job: Callable[[str], None]) -> Listener | None:
    """Listen for new jobs on PostgreSQL; None on other backends (or when it fails: then poll)."""
    if store.backend is not Backend.POSTGRESQL:
        return None

    def callback(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
        on_job(payload)

    conn: AsyncConnection | None = None
    try:
        conn = await store.engine.connect()
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.add_listener(NOTIFY_CHANNEL, callback)
    except Exception as exc:  # a down server, a broken connection: the worker polls meanwhile
        log.warning("cannot LISTEN for new jobs (%s: %s); polling instead", type(exc).__name__, exc)
        if conn is not None:
            await conn.invalidate()
        return None
    return Listener(conn, driver, callback)
