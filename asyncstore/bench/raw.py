"""Raw-driver ceilings: the same rows written by the bare driver's fastest path.

For metric logging and span ingestion, the rows asyncstore writes are written
again, in the same run and the same database, by the driver alone into an
identical empty table (``bench_raw_metrics``, ``bench_raw_spans``: the columns,
types, primary key and indexes of ``metrics`` and ``spans``, without the foreign
keys, since the raw path writes no parent rows). One transaction per 1,000-row
batch, as asyncstore does:

* SQLite: the standard library's ``sqlite3``, ``executemany`` in one transaction,
  with the pragmas asyncstore uses (WAL, ``synchronous = NORMAL``).
* PostgreSQL: asyncpg's ``copy_records_to_table`` (binary COPY).
* MySQL/MariaDB: one multi-row ``INSERT`` through aiomysql (its ``executemany``
  rewrites ``INSERT ... VALUES`` into multi-row statements up to 1 MB each).

Row tuples are built in the untimed ``prepare``; the timed part is the writing
only, so the ceiling is as high as the driver can go.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiomysql
import asyncpg
from sqlalchemy import Column, Computed, ForeignKeyConstraint, Index, MetaData, PrimaryKeyConstraint, Table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncstore.bench.data import metric_batch, span_batch
from asyncstore.bench.database import ScratchDatabase
from asyncstore.bench.measure import Outcome
from asyncstore.bench.scale import SPAN_BATCH, Scale
from asyncstore.config import Backend, StoreConfig, backend_of
from asyncstore.engines import create_engine
from asyncstore.schema import metrics, spans

RAW_EXPERIMENT_ID = 1
RAW_RUN_ID = "0" * 32


def clone_table(source: Table, name: str, metadata: MetaData, *, foreign_keys: bool = False) -> Table:
    """A table with ``source``'s columns, types, defaults, primary key and indexes.

    Without foreign keys by default (the raw path writes no parent rows); with
    ``foreign_keys=True`` it references the same parent tables as ``source``, for a
    ceiling that pays the same reference checks as the store.
    """
    columns: list[Column[Any]] = []
    for column in source.columns:
        extra: list[Any] = []
        kwargs: dict[str, Any] = {"nullable": column.nullable, "autoincrement": False}
        if column.computed is not None:
            extra.append(Computed(column.computed.sqltext, persisted=column.computed.persisted))
        elif column.server_default is not None:
            kwargs["server_default"] = column.server_default.arg  # type: ignore[attr-defined]
        columns.append(Column(column.name, column.type, *extra, **kwargs))
    key = PrimaryKeyConstraint(*source.primary_key.columns.keys(), name=f"{name}_pk")
    indexes = [
        Index(f"ix_{name}_{i}", *[c.name for c in index.columns])
        for i, index in enumerate(sorted(source.indexes, key=lambda ix: str(ix.name)))
    ]
    references = [
        ForeignKeyConstraint(
            [element.parent.name for element in fk.elements],
            [element.column for element in fk.elements],
            ondelete=fk.ondelete,
        )
        for fk in source.foreign_key_constraints
    ] if foreign_keys else []
    return Table(name, metadata, *columns, key, *indexes, *references, **source.dialect_kwargs)


_raw_metadata = MetaData()
RAW_METRICS = clone_table(metrics, "bench_raw_metrics", _raw_metadata)
RAW_SPANS = clone_table(spans, "bench_raw_spans", _raw_metadata)
METRIC_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
SPAN_COLUMNS = (
    "trace_id", "experiment_id", "span_id", "parent_span_id", "name", "type", "status",
    "start_time_unix_nano", "end_time_unix_nano", "content",
)


class RawDriver:
    """A bare driver connection that writes batches of rows by its fastest path.

    One transaction per batch: ``sqlite3`` ``executemany`` (with the store's pragmas:
    WAL, ``synchronous = NORMAL``, foreign keys on), asyncpg ``copy_records_to_table``,
    or aiomysql ``executemany`` (multi-row INSERT statements).

    Args:
        uri: the database (a plain or async URI; the driver is chosen by its backend).
    """

    def __init__(self, uri: str) -> None:
        self.url = make_url(uri)
        self.backend = backend_of(self.url)
        self._sqlite: sqlite3.Connection | None = None
        self._pg: asyncpg.Connection | None = None
        self._my: aiomysql.Connection | None = None

    @property
    def method(self) -> str:
        """How this driver writes, for reports."""
        return {
            Backend.SQLITE: "sqlite3 executemany",
            Backend.POSTGRESQL: "asyncpg copy_records_to_table",
            Backend.MYSQL: "aiomysql executemany (multi-row INSERT)",
        }[self.backend]

    async def open(self) -> None:
        """Connect the driver."""
        url = self.url
        if self.backend is Backend.SQLITE:
            self._sqlite = sqlite3.connect(url.database or "", isolation_level=None, check_same_thread=False)
            self._sqlite.execute("PRAGMA journal_mode = WAL")
            self._sqlite.execute("PRAGMA synchronous = NORMAL")
            self._sqlite.execute("PRAGMA foreign_keys = ON")  # references are checked, as in the store
        elif self.backend is Backend.POSTGRESQL:
            self._pg = await asyncpg.connect(
                host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
                password=url.password, database=url.database,
            )
        elif self.backend is Backend.MYSQL:
            self._my = await aiomysql.connect(
                host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
                password=url.password or "", db=url.database, charset="utf8mb4", autocommit=False,
            )
        else:  # pragma: no cover - exhaustive
            raise AssertionError(self.backend)

    async def write(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Write one batch into ``table`` in one transaction."""
        if self._sqlite is not None:
            marks = ", ".join("?" * len(columns))
            cur = self._sqlite
            cur.execute("BEGIN")
            cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
            cur.execute("COMMIT")
        elif self._pg is not None:
            async with self._pg.transaction():
                await self._pg.copy_records_to_table(table, records=rows, columns=list(columns))
        elif self._my is not None:
            marks = ", ".join(["%s"] * len(columns))
            quoted = ", ".join(f"`{c}`" for c in columns)
            async with self._my.cursor() as cur:
                await cur.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({marks})", rows)
            await self._my.commit()
        else:
            raise RuntimeError("RawDriver.write before open()")

    async def close(self) -> None:
        """Close the driver connection."""
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.close()
        if self._my is not None:
            self._my.close()
        self._sqlite = self._pg = self._my = None


class RawWriter:
    """A :class:`RawDriver` that writes batches of rows into one table it creates.

    Args:
        scratch: the database (the same one asyncstore writes into).
        table: the raw table to create and fill.
        columns: the columns each row tuple gives, in order.
    """

    def __init__(self, scratch: ScratchDatabase, table: Table, columns: Sequence[str]) -> None:
        self.scratch = scratch
        self.table = table
        self.columns = tuple(columns)
        self.driver = RawDriver(scratch.uri)

    async def open(self) -> None:
        """Create the empty table (through SQLAlchemy, untimed) and connect the driver."""
        engine: AsyncEngine = create_engine(StoreConfig.load(self.scratch.uri))
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda sync: self.table.create(sync, checkfirst=True))
        finally:
            await engine.dispose()
        await self.driver.open()

    async def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write one batch in one transaction by the driver's fastest path."""
        await self.driver.write(self.table.name, self.columns, rows)

    async def close(self) -> None:
        """Close the driver connection."""
        await self.driver.close()


class _RawWorkload:
    def __init__(self, scratch: ScratchDatabase, scale: Scale) -> None:
        self.scale = scale
        self.writer = RawWriter(scratch, *self.target())
        self.batches: list[list[tuple[Any, ...]]] = []

    def target(self) -> tuple[Table, Sequence[str]]:
        raise NotImplementedError

    async def setup(self) -> None:
        """Create the raw table and connect."""
        await self.writer.open()

    async def run(self, rep: int) -> Outcome:
        """Write this repetition's batches."""
        for batch in self.batches:
            await self.writer.write(batch)
        return Outcome(sum(len(b) for b in self.batches))

    async def teardown(self) -> None:
        """Disconnect."""
        await self.writer.close()


class RawMetrics(_RawWorkload):
    """The rows of the ``log_batch`` workload into ``bench_raw_metrics``."""

    def target(self) -> tuple[Table, Sequence[str]]:
        """The raw metrics table and its columns."""
        return RAW_METRICS, METRIC_COLUMNS

    async def prepare(self, rep: int) -> None:
        """This repetition's rows (the ones asyncstore logs in the same repetition)."""
        n = self.scale.metric_batches
        self.batches = [
            [(m.key, m.value, m.timestamp, m.step, False, RAW_RUN_ID) for m in metric_batch(rep, b, n)]
            for b in range(n)
        ]


class RawSpans(_RawWorkload):
    """The rows of the ``log_spans`` workload into ``bench_raw_spans``."""

    def target(self) -> tuple[Table, Sequence[str]]:
        """The raw spans table and its columns."""
        return RAW_SPANS, SPAN_COLUMNS

    async def prepare(self, rep: int) -> None:
        """This repetition's rows, content JSON included."""
        self.batches = [
            [
                (r.trace_id, RAW_EXPERIMENT_ID, r.span_id, r.parent_span_id, r.name, r.span_type, "OK",
                 r.start_ns, r.end_ns, r.content())
                for r in span_batch("raw", rep, b, size=SPAN_BATCH)
            ]
            for b in range(self.scale.span_batches)
        ]


RAW_WORKLOADS: dict[str, type[_RawWorkload]] = {"log_batch": RawMetrics, "log_spans": RawSpans}
