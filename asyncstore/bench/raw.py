"""Raw-driver ceilings: the same work done by the bare driver.

Writes (``log_batch``, ``log_spans``): the rows asyncstore writes are written
again, in the same run and the same database, by the driver alone, one
transaction per batch, into two copies of the store's table:

* ``raw``: a bare copy (``bench_raw_metrics``, ``bench_raw_spans``: the columns,
  types, primary key and indexes of ``metrics`` and ``spans``, no foreign keys):
  a strict ceiling;
* ``raw_fk``: an identical copy, foreign keys included (the parent run, trace and
  experiment rows are written before the clock starts): what the same table costs
  the driver, so the distance left is the store's own code.

The fastest path per driver: SQLite the standard library's ``sqlite3``
``executemany`` in one transaction, with the store's pragmas (WAL,
``synchronous = NORMAL``); PostgreSQL asyncpg's ``copy_records_to_table`` (binary
COPY); MySQL/MariaDB ``LOAD DATA LOCAL INFILE`` through aiomysql, the rows streamed
through a pipe (:func:`asyncstore.driver.mysql_load_data`). On MySQL/MariaDB a third
ceiling, ``raw_insert``, writes the bare table by aiomysql's ``executemany``
(multi-row ``INSERT`` statements of up to 1 MB), the path asyncstore took before.
Row tuples are built in the untimed ``prepare``, by the store's own preparation
(``Batch.validate``, the span rows of ``log_spans`` with MLflow's span JSON), so the
ceilings write the very bytes the store writes, in its (primary-key) order.

The read and job ceilings, which replay the statements the store sends, are in
:mod:`asyncstore.bench.replay`.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from collections.abc import (
    AsyncIterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any

import aiomysql
import asyncpg
from sqlalchemy import (
    Column,
    Computed,
    ForeignKeyConstraint,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    event,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import assert_never

from asyncstore.bench.data import metric_batch, span_batch, to_metrics, to_spans
from asyncstore.bench.database import ScratchDatabase
from asyncstore.bench.measure import Outcome
from asyncstore.bench.scale import METRIC_BATCH, SPAN_BATCH, Scale
from asyncstore.config import Backend, StoreConfig, backend_of
from asyncstore.driver import mysql_load_data
from asyncstore.engines import create_engine
from asyncstore.schema import ROW_ORDERED, has_row_order, metrics, row_order_ddl, spans
from asyncstore.tracking.batch import Batch
from asyncstore.tracing.ingest import span_records
from asyncstore.tracing.rows import prepare as prepare_spans

if TYPE_CHECKING:
    from asyncstore.bench.workloads import Spec, _StoreWorkload

RAW_EXPERIMENT_ID = 1
Statement = tuple[str, Any]
"""One statement as the store sent it to the driver: SQL in the driver's paramstyle, parameters."""


def clone_table(source: Table, name: str, metadata: MetaData, *, foreign_keys: bool = False) -> Table:
    """A table with ``source``'s columns, types, defaults, primary key and indexes
    (on MySQL also its layout: :data:`asyncstore.schema.ROW_ID`).

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
    table = Table(name, metadata, *columns, key, *indexes, *references, **source.dialect_kwargs)
    if source.name in ROW_ORDERED:  # stored as the source is on MySQL: keyed by an invisible row id
        ddl = row_order_ddl(name, source.primary_key.columns.keys(), f"{name}_pk")

        def row_order(_table: Table, connection: Connection, **_: Any) -> None:
            if has_row_order(connection.dialect):
                connection.exec_driver_sql(ddl)

        event.listen(table, "after_create", row_order)
    return table


_raw_metadata = MetaData()
RAW_METRICS = clone_table(metrics, "bench_raw_metrics", _raw_metadata)
RAW_SPANS = clone_table(spans, "bench_raw_spans", _raw_metadata)
RAW_FK_METRICS = clone_table(metrics, "bench_raw_fk_metrics", _raw_metadata, foreign_keys=True)
RAW_FK_SPANS = clone_table(spans, "bench_raw_fk_spans", _raw_metadata, foreign_keys=True)
TRACE_COLUMNS = ("request_id", "experiment_id", "timestamp_ms", "execution_time_ms", "status")
METRIC_COLUMNS = ("key", "timestamp", "step", "value", "is_nan", "run_uuid")
SPAN_COLUMNS = (
    "trace_id", "experiment_id", "span_id", "parent_span_id", "name", "type", "status",
    "start_time_unix_nano", "end_time_unix_nano", "content",
)


class RawDriver:
    """A bare driver connection that writes batches of rows by its fastest path.

    One transaction per batch: ``sqlite3`` ``executemany`` (with the store's pragmas:
    WAL, ``synchronous = NORMAL``, foreign keys on, case-sensitive LIKE), asyncpg
    ``copy_records_to_table``, or aiomysql ``LOAD DATA LOCAL INFILE`` (with
    ``multirow_insert``: ``executemany``, multi-row INSERT statements).
    :meth:`fetch_all` and :meth:`replay` run recorded statements.

    Args:
        uri: the database (a plain or async URI; the driver is chosen by its backend).
        multirow_insert: MySQL/MariaDB: write by multi-row INSERT instead of LOAD DATA.
    """

    def __init__(self, uri: str, *, multirow_insert: bool = False) -> None:
        self.url = make_url(uri)
        self.backend = backend_of(self.url)
        self.multirow_insert = multirow_insert
        self._sqlite: sqlite3.Connection | None = None
        self._pg: asyncpg.Connection | None = None
        self._my: aiomysql.Connection | None = None

    @property
    def method(self) -> str:
        """How this driver writes, for reports."""
        return {
            Backend.SQLITE: "sqlite3 executemany",
            Backend.POSTGRESQL: "asyncpg copy_records_to_table",
            Backend.MYSQL: (
                "aiomysql executemany (multi-row INSERT)" if self.multirow_insert
                else "aiomysql LOAD DATA LOCAL INFILE (streamed)"
            ),
        }[self.backend]

    async def open(self) -> None:
        """Connect the driver."""
        url = self.url
        if self.backend is Backend.SQLITE:
            self._sqlite = sqlite3.connect(url.database or "", isolation_level=None, check_same_thread=False)
            self._sqlite.execute("PRAGMA journal_mode = WAL")
            self._sqlite.execute("PRAGMA synchronous = NORMAL")
            self._sqlite.execute("PRAGMA foreign_keys = ON")  # references are checked, as in the store
            self._sqlite.execute("PRAGMA case_sensitive_like = ON")  # LIKE matches the same rows as the store's
        elif self.backend is Backend.POSTGRESQL:
            self._pg = await asyncpg.connect(
                host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
                password=url.password, database=url.database,
            )
        elif self.backend is Backend.MYSQL:
            self._my = await aiomysql.connect(
                host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
                password=url.password or "", db=url.database, charset="utf8mb4", autocommit=False,
                # The store's isolation level, so that replayed reads and claims behave alike.
                init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                local_infile=not self.multirow_insert,
            )
        else:
            assert_never(self.backend)

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
        elif self._my is not None and not self.multirow_insert:
            loaded, warned = await mysql_load_data(self._my, table, columns, rows)
            if loaded != len(rows) or warned:  # LOCAL implies IGNORE: a skipped row is only a warning
                await self._my.rollback()
                raise RuntimeError(f"LOAD DATA loaded {loaded} of {len(rows)} rows into {table} ({warned} warnings)")
            await self._my.commit()
        elif self._my is not None:
            marks = ", ".join(["%s"] * len(columns))
            quoted = ", ".join(f"`{c}`" for c in columns)
            async with self._my.cursor() as cur:
                await cur.executemany(f"INSERT INTO {table} ({quoted}) VALUES ({marks})", rows)
            await self._my.commit()
        else:
            raise RuntimeError("RawDriver.write before open()")

    async def fetch_all(self, statements: Sequence[Statement]) -> int:
        """Run ``statements`` in one transaction, fetching every row; return the rows fetched."""
        rows = 0
        async with self._transaction():
            for sql, params in statements:
                rows += len((await self._fetch(sql, params))[1])
        return rows

    async def replay(
        self, statements: Sequence[Statement], values: Mapping[str, str], learn: str | None = None
    ) -> str | None:
        """Run recorded ``statements`` in one transaction with recorded parameter values replaced.

        Every string parameter equal to a key of ``values`` is sent as its value. With
        ``learn``, the first result set names the new value of ``learn`` (its first
        row's ``id``), used by the later statements and returned; when that result
        set is empty the rest is skipped and None returned (e.g. nothing to claim).
        """
        values = dict(values)
        learned: str | None = None
        async with self._transaction():
            for sql, params in statements:
                if params:
                    params = type(params)(values.get(v, v) if isinstance(v, str) else v for v in params)
                names, rows = await self._fetch(sql, params)
                if learn is not None and learned is None and names:
                    if not rows:
                        return None
                    learned = values[learn] = str(rows[0][names.index("id")])
        return learned

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        if self._sqlite is not None:
            self._sqlite.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._sqlite.execute("ROLLBACK")
                raise
            self._sqlite.execute("COMMIT")
        elif self._pg is not None:
            async with self._pg.transaction():
                yield
        elif self._my is not None:
            try:
                yield
            except BaseException:
                await self._my.rollback()
                raise
            await self._my.commit()
        else:
            raise RuntimeError("RawDriver used before open()")

    async def _fetch(self, sql: str, params: Any) -> tuple[list[str], Sequence[Any]]:
        """One statement: its column names (none without a result set) and all its rows."""
        if self._sqlite is not None:
            cursor = self._sqlite.execute(sql, params or ())
            return [d[0] for d in cursor.description or ()], cursor.fetchall()
        if self._pg is not None:
            found = await self._pg.fetch(sql, *(params or ()))
            if found:
                return list(found[0].keys()), found
            text = sql.lstrip().upper()
            return (["?"] if text.startswith(("SELECT", "WITH")) or " RETURNING " in text else []), found
        if self._my is None:
            raise RuntimeError("RawDriver used before open()")
        async with self._my.cursor() as cur:
            await cur.execute(sql, params)
            return [d[0] for d in cur.description or ()], await cur.fetchall()

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

    def __init__(
        self, scratch: ScratchDatabase, table: Table, columns: Sequence[str], *, multirow_insert: bool = False
    ) -> None:
        self.scratch = scratch
        self.table = table
        self.columns = tuple(columns)
        self.driver = RawDriver(scratch.uri, multirow_insert=multirow_insert)

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


class _RawWrites:
    """One system writing the rows of a write workload into a copy of the store's table."""

    table: Table
    columns: tuple[str, ...]
    multirow_insert = False

    def __init__(self, scratch: ScratchDatabase, scale: Scale, spec: Spec, peer: _StoreWorkload) -> None:
        self.scratch = scratch
        self.scale = scale
        self.spec = spec
        self.peer = peer
        self.writer = RawWriter(scratch, self.table, self.columns, multirow_insert=self.multirow_insert)
        self.batches: list[list[tuple[Any, ...]]] = []
        self.salt = secrets.token_hex(8)  # rows of their own: several variants share a table

    async def setup(self) -> None:
        """Create the table and connect."""
        await self.writer.open()

    async def prepare(self, rep: int) -> None:
        """Build this repetition's row tuples (each ceiling has its own)."""
        raise NotImplementedError

    async def run(self, rep: int) -> Outcome:
        """Write this repetition's batches."""
        for batch in self.batches:
            await self.writer.write(batch)
        return Outcome(sum(len(b) for b in self.batches))

    async def teardown(self) -> None:
        """Disconnect."""
        await self.writer.close()


class RawMetrics(_RawWrites):
    """The rows of a ``log_batch`` workload into ``bench_raw_metrics`` (no foreign keys)."""

    table, columns = RAW_METRICS, METRIC_COLUMNS

    async def run_id(self) -> str:
        """The run the rows belong to (bare table: any id)."""
        return self.salt * 2

    async def setup(self) -> None:
        """Create the table, connect, pick the run."""
        await super().setup()
        self.run_uuid = await self.run_id()

    async def prepare(self, rep: int) -> None:
        """This repetition's rows (the ones asyncstore logs in the same repetition), each
        as the store writes it: validated and sorted by its own ``Batch`` (untimed)."""
        size = self.spec.batch or METRIC_BATCH
        n = self.spec.size(self.scale) // size
        self.batches = []
        for b in range(n):
            batch = Batch.validate(self.run_uuid, to_metrics(metric_batch(rep, b, n, size=size)), [], [])
            self.batches.append([(*row, self.run_uuid) for row in batch.metric_rows])


class RawFkMetrics(RawMetrics):
    """The same rows into ``bench_raw_fk_metrics``: ``metrics`` with its foreign key, for a real run."""

    table = RAW_FK_METRICS

    async def run_id(self) -> str:
        """A run created through the store (untimed)."""
        run = await self.peer.store.runs.create(self.peer.experiment_id, run_name=f"raw-fk-{self.salt}")
        return run.info.run_id


class RawSpans(_RawWrites):
    """The rows of a ``log_spans`` workload into ``bench_raw_spans`` (no foreign keys)."""

    table, columns = RAW_SPANS, SPAN_COLUMNS

    def experiment(self) -> int:
        """The experiment id the rows carry."""
        return RAW_EXPERIMENT_ID

    async def prepare(self, rep: int) -> None:
        """This repetition's rows, each exactly as the store writes it (its content JSON
        made by the store's own encoding, untimed): the ceiling writes the same bytes."""
        size = self.spec.batch or SPAN_BATCH
        experiment = self.experiment()
        self.rows = [span_batch(self.salt, rep, b, size=size) for b in range(self.spec.size(self.scale) // size)]
        self.batches = [
            span_records(prepare_spans(to_spans(rows), experiment).span_rows, experiment, derived=False)
            for rows in self.rows
        ]


class RawFkSpans(RawSpans):
    """The same rows into ``bench_raw_fk_spans``: ``spans`` with its foreign keys (traces written untimed)."""

    table = RAW_FK_SPANS

    def experiment(self) -> int:
        """The store workload's experiment (the foreign key checks it)."""
        return int(self.peer.experiment_id)

    async def prepare(self, rep: int) -> None:
        """This repetition's rows, and their traces written first."""
        await super().prepare(rep)
        experiment = self.experiment()
        roots = [r for rows in self.rows for r in rows if r.parent_span_id is None]
        traces = [(r.trace_id, experiment, r.start_ns // 1_000_000, (r.end_ns - r.start_ns) // 1_000_000, "OK")
                  for r in roots]
        await self.writer.driver.write("trace_info", TRACE_COLUMNS, traces)


class RawInsertMetrics(RawMetrics):
    """MySQL/MariaDB: the ``raw`` rows of ``log_batch`` by multi-row INSERT (``raw_insert``)."""

    multirow_insert = True


class RawInsertSpans(RawSpans):
    """MySQL/MariaDB: the ``raw`` rows of ``log_spans`` by multi-row INSERT (``raw_insert``)."""

    multirow_insert = True


RAW_WRITES: dict[str, type[_RawWrites]] = {"log_batch": RawMetrics, "log_spans": RawSpans}
"""The ``raw`` ceiling (bare table) of the write workloads."""
RAW_INSERT_WORKLOADS: dict[str, type[_RawWrites]] = {"log_batch": RawInsertMetrics, "log_spans": RawInsertSpans}
"""MySQL/MariaDB's ``raw_insert`` ceiling (bare table, multi-row INSERT) of the write workloads."""
RAW_FK_WORKLOADS: dict[str, type[_RawWrites]] = {"log_batch": RawFkMetrics, "log_spans": RawFkSpans}
"""The ``raw_fk`` ceiling (identical table, foreign keys included) of the write workloads."""
