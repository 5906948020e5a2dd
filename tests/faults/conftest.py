"""Shared bits of the fault suite: the server-only parametrisation and row counting."""

from __future__ import annotations

import pytest
from sqlalchemy import Table, func, select

SERVERS = pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
"""For faults that need a server process to kill (SQLite's analogue is a killed process)."""


async def count_rows(store: object, table: Table, *where: object) -> int:
    """``SELECT count(*)`` of ``table`` through the store's own unit of work."""

    async def read(conn):  # type: ignore[no-untyped-def]
        return int(await conn.scalar(select(func.count()).select_from(table).where(*where)))

    return int(await store.uow.run(read, write=False))  # type: ignore[attr-defined]
