"""Raw-driver ceilings for span ingestion: the fastest each driver can insert the rows.

Each writer inserts the same row tuples that ``store.spans.log_spans`` writes
(content already serialised, so the ceiling excludes even JSON encoding) into
``spans_raw``: a copy of the ``spans`` table with the same columns, generated
``duration_ns``, indexes and foreign keys (to ``trace_info`` and ``experiments``;
the trace rows are written before the clock starts). ``spans_raw_nofk`` is the
same without foreign keys, for a second, higher ceiling. One transaction per
batch, as ``log_spans`` uses.

* PostgreSQL: asyncpg ``copy_records_to_table``.
* SQLite: the ``sqlite3`` module's ``executemany`` (WAL, synchronous=NORMAL, as the store).
* MySQL/MariaDB: aiomysql ``executemany``, which sends multi-row INSERT statements.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiomysql
import asyncpg
from sqlalchemy import Column, ForeignKeyConstraint, Index, MetaData, PrimaryKeyConstraint, Table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncstore.schema import MYSQL_TABLE_ARGS, spans

RAW_TABLE = "spans_raw"
RAW_TABLE_NOFK = "spans_raw_nofk"
COLUMNS = (
    "trace_id", "experiment_id", "span_id", "parent_span_id", "name", "type", "status",
    "start_time_unix_nano", "end_time_unix_nano", "content",
)


def raw_table(name: str = RAW_TABLE, *, foreign_keys: bool = True) -> Table:
    """A copy of ``spans`` under another name: same columns, indexes and (optionally) FKs."""
    meta = MetaData()
    Table("experiments", meta, Column("experiment_id", spans.c.experiment_id.type, primary_key=True))
    Table("trace_info", meta, Column("request_id", spans.c.trace_id.type, primary_key=True))
    columns = [Column(c.name, c.type, c.computed.copy() if c.computed else None, nullable=c.nullable) for c in spans.c]
    fks = [
        ForeignKeyConstraint(["trace_id"], ["trace_info.request_id"], ondelete="CASCADE"),
        ForeignKeyConstraint(["experiment_id"], ["experiments.experiment_id"], ondelete="CASCADE"),
    ] if foreign_keys else []
    table = Table(name, meta, *columns, PrimaryKeyConstraint("trace_id", "span_id"), *fks, **MYSQL_TABLE_ARGS)
    for index in spans.indexes:
        Index(index.name.replace("spans", name), *(table.c[c.name] for c in index.columns))  # type: ignore[union-attr]
    return table


async def create_raw_tables(engine: AsyncEngine) -> None:
    """(Re)create empty ``spans_raw`` and ``spans_raw_nofk`` next to the store's tables."""
    async with engine.begin() as conn:
        for table in (raw_table(), raw_table(RAW_TABLE_NOFK, foreign_keys=False)):
            await conn.run_sync(table.drop, checkfirst=True)
            await conn.run_sync(table.create)


class RawWriter:
    """Writes batches of span rows with one driver's fastest path."""

    async def open(self) -> None:
        """Connect."""

    async def write(self, rows: Sequence[tuple[Any, ...]], table: str = RAW_TABLE) -> None:
        """Insert one batch into ``table`` in one transaction."""
        raise NotImplementedError

    async def close(self) -> None:
        """Disconnect."""


class PostgresRaw(RawWriter):
    """asyncpg ``copy_records_to_table``."""

    def __init__(self, uri: str) -> None:
        self.url = make_url(uri)
        self.conn: asyncpg.Connection | None = None

    async def open(self) -> None:
        u = self.url
        self.conn = await asyncpg.connect(
            host=u.host, port=u.port or 5432, user=u.username, password=u.password, database=u.database
        )

    async def write(self, rows: Sequence[tuple[Any, ...]], table: str = RAW_TABLE) -> None:
        assert self.conn is not None
        async with self.conn.transaction():
            await self.conn.copy_records_to_table(table, records=rows, columns=COLUMNS)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class SqliteRaw(RawWriter):
    """``sqlite3`` executemany in one transaction per batch (called inline: no thread hop)."""

    SQL = f"INSERT INTO {{}} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

    def __init__(self, uri: str) -> None:
        self.path = make_url(uri).database or ""
        self.conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)
        self.conn.execute("PRAGMA foreign_keys = ON")  # as the store: references are checked
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")

    async def write(self, rows: Sequence[tuple[Any, ...]], table: str = RAW_TABLE) -> None:
        assert self.conn is not None
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(self.SQL.format(table), rows)
        self.conn.execute("COMMIT")

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class MysqlRaw(RawWriter):
    """aiomysql ``executemany`` (multi-row INSERT statements of up to ~1 MB)."""

    SQL = f"INSERT INTO {{}} ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"

    def __init__(self, uri: str) -> None:
        self.url = make_url(uri)
        self.conn: aiomysql.Connection | None = None

    async def open(self) -> None:
        u = self.url
        self.conn = await aiomysql.connect(
            host=u.host or "127.0.0.1", port=u.port or 3306, user=u.username or "root",
            password=u.password or "", db=u.database, charset="utf8mb4", autocommit=False,
        )

    async def write(self, rows: Sequence[tuple[Any, ...]], table: str = RAW_TABLE) -> None:
        assert self.conn is not None
        async with self.conn.cursor() as cur:
            await cur.executemany(self.SQL.format(table), rows)
        await self.conn.commit()

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def writer_for(backend: str, uri: str) -> RawWriter:
    """The raw writer of a backend (``sqlite``, ``postgresql`` or ``mysql``)."""
    if backend == "postgresql":
        return PostgresRaw(uri)
    if backend == "sqlite":
        return SqliteRaw(uri)
    if backend == "mysql":
        return MysqlRaw(uri)
    raise ValueError(f"unknown backend {backend!r}")
