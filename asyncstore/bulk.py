"""Bulk writes by the server's own load path: PostgreSQL ``COPY``, MySQL/MariaDB
``LOAD DATA LOCAL INFILE``; the one place both are tried and given up.

:func:`load_new` writes rows that are expected to be new (span batches, metric
history) the fastest way the server takes them, inside the caller's transaction and
under a savepoint, and says whether it did. When it did not, nothing of the attempt
is left and the caller writes the rows its usual way (an upsert), in the same
transaction; so every guarantee of the usual path holds, and the load is only a
faster way to the same rows in the common case:

The savepoint and the load go straight to the driver (:class:`asyncstore.driver.Driver`),
so SQLAlchemy's statement events and ``echo`` see them.

* PostgreSQL: binary ``COPY`` (:meth:`asyncstore.driver.Driver.copy`). A row whose
  key is stored already fails the COPY with a unique violation: rolled back to the
  savepoint, False.
* MySQL/MariaDB: ``LOAD DATA LOCAL INFILE`` with the rows streamed through a pipe
  (:meth:`asyncstore.driver.Driver.load_data`: no file on disk). LOCAL turns what
  would be an error (a duplicate key without ``replace``, a value the column cannot
  hold) into a warning, so a load with any warning is rolled back to the savepoint:
  False, and the caller's statement refuses a bad value as strict mode does. With
  ``replace`` a row whose key is stored replaces it, as an upsert that overwrites the
  whole row would. A server or account that refuses LOCAL INFILE is remembered for
  the engine, with one log line, and the load is not tried again; the
  ``mysql_local_infile`` setting turns it off from the start.
* SQLite: no such path (``executemany`` in the same thread is its fastest): False.

Batches smaller than :data:`BULK_MIN` rows are not tried: the savepoint's round trips
cost more than the load saves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pymysql
from asyncpg.exceptions import UniqueViolationError
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore.config import Backend
from asyncstore.driver import Driver
from asyncstore.engines import EngineState, engine_state

log = logging.getLogger(__name__)

BULK_MIN = 100
"""Below this many rows the usual statement is as fast as a load plus its savepoint."""

LOCAL_INFILE_REFUSED = frozenset({1148, 3948, 4166})
"""MySQL/MariaDB errors of a server or account that does not take LOAD DATA LOCAL:
"command not allowed" (1148), "loading local data is disabled" (3948, 4166)."""


def savepoint_name(table: str) -> str:
    """The savepoint a load into ``table`` runs under (statement logs and the fault suite name it)."""
    return f"asyncstore_load_{table}"


async def load_new(
    conn: AsyncConnection, backend: Backend, table: str, columns: Sequence[str], records: Sequence[Sequence[Any]],
    *, replace: bool = False,
) -> bool:
    """Write ``records`` (values in ``columns`` order) into ``table`` by the server's load
    path, under a savepoint of the caller's transaction; whether they were written.

    False leaves nothing of the attempt: the caller writes the rows its own way.
    ``replace`` (MySQL/MariaDB): a row whose key is stored replaces it; on PostgreSQL
    such a row always makes the COPY give way.
    """
    if len(records) < BULK_MIN or backend is Backend.SQLITE:
        return False
    state = engine_state(conn.engine)
    if backend is Backend.MYSQL and not state.load_data:
        return False
    driver = await Driver.of(conn)  # inside SQLAlchemy's transaction
    savepoint = savepoint_name(table)
    await driver.execute(f"SAVEPOINT {savepoint}")
    if await _load(driver, state, table, columns, records, replace):
        await driver.execute(f"RELEASE SAVEPOINT {savepoint}")
        return True
    await driver.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
    return False


async def _load(
    driver: Driver, state: EngineState, table: str, columns: Sequence[str], records: Sequence[Sequence[Any]],
    replace: bool,
) -> bool:
    """The load itself; False when it gave way (the caller rolls back to the savepoint)."""
    if driver.backend is Backend.POSTGRESQL:
        try:
            await driver.copy(table, columns, records)
        except UniqueViolationError:
            return False
        return True
    try:
        _, warned = await driver.load_data(table, columns, records, replace=replace)
    except pymysql.err.MySQLError as exc:
        if (exc.args[0] if exc.args else None) not in LOCAL_INFILE_REFUSED:
            raise
        state.load_data = False
        log.warning("the server refuses LOAD DATA LOCAL INFILE (%s); bulk writes use INSERT from now on", exc)
        return False
    return not warned


__all__ = ["BULK_MIN", "load_new", "savepoint_name"]
