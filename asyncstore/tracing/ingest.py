"""Bulk span ingestion: the hand-written statements, one set per backend.

A batch is written with a bounded number of statements, whatever its size:

1. one upsert of the batch's ``trace_info`` rows, in sorted ``request_id`` order,
   that creates missing traces and widens existing ones (earliest start, latest end,
   state from the root span while the trace is IN_PROGRESS). The upsert takes the
   trace row locks in sorted order, so concurrent ingesters on PostgreSQL and
   MySQL queue behind each other instead of deadlocking;
2. one check that no trace of the batch belongs to another experiment
   (:data:`FOREIGN_TRACE`, per chunk of ``TRACE_CHUNK`` trace ids), which also reads
   the experiment's artifact location;
3. one upsert of the tags MLflow's ``log_spans`` writes (:mod:`asyncstore.tracing.keys`):
   ``mlflow.trace.spansLocation`` = ``TRACKING_STORE`` on every trace of the batch, and
   ``mlflow.artifactLocation`` on a trace that has none;
4. one upsert of the span rows (sorted by trace_id, span_id) per chunk of
   ``SPAN_CHUNK`` spans: re-sent spans overwrite the stored row.

Per backend, the fastest path measured by ``asyncstore bench --workload log_spans``
(the calls that bypass SQLAlchemy go through :class:`asyncstore.driver.Driver`, so
SQLAlchemy's statement events and ``echo`` still see them):

* PostgreSQL: batches of ``PG_COPY_MIN`` spans or more are first tried with
  ``COPY`` straight into ``spans`` under a savepoint (about a fifth faster than the
  upsert for 1,000-span batches); if a span is already stored, the unique
  violation rolls back to the savepoint and the batch takes the upsert path:
  ``INSERT ... SELECT FROM unnest($arrays) ON CONFLICT DO UPDATE``, one prepared
  statement with a fixed number (10) of array parameters, so the 32767
  bind-parameter limit never applies.
* SQLite: ``executemany`` of a one-row upsert (sqlite3 loops in C, one call into
  the aiosqlite thread per batch).
* MySQL/MariaDB: ``executemany`` of a one-row ``INSERT ... ON DUPLICATE KEY
  UPDATE``, which aiomysql rewrites into multi-row statements of at most ~1 MB each
  (below MariaDB's 16 MB ``max_allowed_packet``).

``duration_ns`` is a generated column and is never written.
"""

from __future__ import annotations

from typing import Any

from asyncpg.exceptions import UniqueViolationError
from sqlalchemy import case, literal_column
from sqlalchemy.ext.asyncio import AsyncConnection
from typing_extensions import assert_never

from asyncstore.config import Backend
from asyncstore.dialect import chunks, upsert
from asyncstore.driver import Driver
from asyncstore.errors import InvalidParameter, InvalidState
from asyncstore.schema import trace_tags
from asyncstore.tracing import keys
from asyncstore.tracing.rows import PreparedBatch

SPAN_CHUNK = 5000
"""Spans per statement: bounds the size of one message (~5 MB of 1 KB spans)."""
TRACE_CHUNK = 2000
"""Trace ids per IN list in the experiment check (2000 binds, far below every limit)."""

_SPAN_COLUMNS = (
    "trace_id, experiment_id, span_id, parent_span_id, name, type, status, "
    "start_time_unix_nano, end_time_unix_nano, content"
)
_SPAN_COLUMN_LIST = tuple(c.strip() for c in _SPAN_COLUMNS.split(","))
PG_COPY_MIN = 100
"""Below this many spans the single upsert statement is as fast as COPY plus its
savepoint round trips."""
_SPAN_OVERWRITE = (
    "parent_span_id", "name", "type", "status", "start_time_unix_nano", "end_time_unix_nano", "content",
)
_TRACE_COLUMNS = "request_id, experiment_id, timestamp_ms, execution_time_ms, status"

# --- PostgreSQL ---------------------------------------------------------------------
# $1 is the experiment id; the arrays are the columns of the rows, in row order.
PG_SPANS = f"""
INSERT INTO spans ({_SPAN_COLUMNS})
SELECT u.trace_id, $1, u.span_id, u.parent_span_id, u.name, u.type, u.status, u.start_ns, u.end_ns, u.content
FROM unnest($2::varchar[], $3::varchar[], $4::varchar[], $5::text[], $6::varchar[], $7::varchar[],
            $8::bigint[], $9::bigint[], $10::text[])
     WITH ORDINALITY AS u(trace_id, span_id, parent_span_id, name, type, status, start_ns, end_ns, content, n)
ORDER BY u.n
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _SPAN_OVERWRITE)}
"""

# Widening: the new range is [min(old start, new start), max(old end, new end)];
# the state follows the root span only while the stored trace is IN_PROGRESS.
PG_TRACES = f"""
INSERT INTO trace_info AS t ({_TRACE_COLUMNS})
SELECT u.request_id, $1, u.timestamp_ms, u.execution_time_ms, u.status
FROM unnest($2::varchar[], $3::bigint[], $4::bigint[], $5::varchar[])
     WITH ORDINALITY AS u(request_id, timestamp_ms, execution_time_ms, status, n)
ORDER BY u.n
ON CONFLICT (request_id) DO UPDATE SET
    execution_time_ms = GREATEST(t.timestamp_ms + COALESCE(t.execution_time_ms, 0),
                                 excluded.timestamp_ms + excluded.execution_time_ms)
                        - LEAST(t.timestamp_ms, excluded.timestamp_ms),
    timestamp_ms = LEAST(t.timestamp_ms, excluded.timestamp_ms),
    status = CASE WHEN t.status = 'IN_PROGRESS' THEN excluded.status ELSE t.status END
"""

# --- SQLite -------------------------------------------------------------------------
SQLITE_SPANS = f"""
INSERT INTO spans ({_SPAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _SPAN_OVERWRITE)}
"""

SQLITE_TRACES = f"""
INSERT INTO trace_info ({_TRACE_COLUMNS}) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (request_id) DO UPDATE SET
    execution_time_ms = MAX(trace_info.timestamp_ms + COALESCE(trace_info.execution_time_ms, 0),
                            excluded.timestamp_ms + excluded.execution_time_ms)
                        - MIN(trace_info.timestamp_ms, excluded.timestamp_ms),
    timestamp_ms = MIN(trace_info.timestamp_ms, excluded.timestamp_ms),
    status = CASE WHEN trace_info.status = 'IN_PROGRESS' THEN excluded.status ELSE trace_info.status END
"""

# --- MySQL / MariaDB ----------------------------------------------------------------
# The VALUES (...) clause must stay a single row of %s: aiomysql's executemany
# recognises that shape and sends multi-row statements.
MYSQL_SPANS = f"""
INSERT INTO spans ({_SPAN_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON DUPLICATE KEY UPDATE {", ".join(f"{c} = VALUES({c})" for c in _SPAN_OVERWRITE)}
"""

# MySQL assigns left to right and later assignments see earlier results, so the
# duration is computed before timestamp_ms changes.
MYSQL_TRACES = f"""
INSERT INTO trace_info ({_TRACE_COLUMNS}) VALUES (%s, %s, %s, %s, %s)
ON DUPLICATE KEY UPDATE
    execution_time_ms = GREATEST(timestamp_ms + COALESCE(execution_time_ms, 0),
                                 VALUES(timestamp_ms) + VALUES(execution_time_ms))
                        - LEAST(timestamp_ms, VALUES(timestamp_ms)),
    timestamp_ms = LEAST(timestamp_ms, VALUES(timestamp_ms)),
    status = IF(status = 'IN_PROGRESS', VALUES(status), status)
"""

# --- every backend ------------------------------------------------------------------
# The experiment's artifact location, beside the first trace of a chunk of the batch's
# trace ids that belongs to another experiment (NULLs when none does); {ids} is one
# placeholder per id, {experiment} and {experiment2} the batch's experiment.
FOREIGN_TRACE = """
SELECT e.artifact_location, f.request_id, f.experiment_id
FROM experiments e
LEFT JOIN (
    SELECT request_id, experiment_id FROM trace_info
    WHERE request_id IN ({ids}) AND experiment_id <> {experiment}
    LIMIT 1
) f ON 1 = 1
WHERE e.experiment_id = {experiment2}
"""


def _foreign_trace_sql(backend: Backend, n: int) -> str:
    """:data:`FOREIGN_TRACE` for ``n`` ids, in the placeholders of the backend's driver
    (the experiment id is passed twice)."""
    if backend is Backend.POSTGRESQL:
        marks = [f"${i}" for i in range(1, n + 3)]
    elif backend is Backend.SQLITE:
        marks = ["?"] * (n + 2)
    elif backend is Backend.MYSQL:
        marks = ["%s"] * (n + 2)
    else:
        assert_never(backend)
    return FOREIGN_TRACE.format(ids=", ".join(marks[:n]), experiment=marks[n], experiment2=marks[n + 1])


def _tags_upsert(backend: Backend) -> Any:
    """Insert the MLflow tags of :func:`_tag_rows`; on a conflict only the spans location
    is overwritten (an artifact location, once set, stays what it is, as in MLflow)."""
    return upsert(
        backend,
        trace_tags,
        ["key", "request_id"],
        [],
        merge=lambda new: {
            # The key as a literal in the SQL: a bound parameter in ON DUPLICATE KEY UPDATE
            # defeats aiomysql's multi-row rewrite of executemany.
            "value": case((new.key == literal_column(f"'{keys.SPANS_LOCATION}'"), new.value), else_=trace_tags.c.value)
        },
    )


def _tag_rows(trace_ids: list[str], artifact_location: str | None) -> list[dict[str, str]]:
    """The tags MLflow's ``log_spans`` writes for these traces, in primary-key order
    (key, request_id), so concurrent ingesters lock them in the same order."""
    rows: list[dict[str, str]] = []
    if artifact_location is not None:
        rows.extend(
            {"key": keys.ARTIFACT_LOCATION, "value": keys.trace_artifact_location(artifact_location, t), "request_id": t}
            for t in trace_ids
        )
    rows.extend({"key": keys.SPANS_LOCATION, "value": keys.TRACKING_STORE, "request_id": t} for t in trace_ids)
    return rows


async def write_batch(conn: AsyncConnection, backend: Backend, experiment_id: int, batch: PreparedBatch) -> None:
    """Write a prepared batch in the caller's transaction.

    Raises:
        InvalidParameter: a trace of the batch belongs to another experiment.
    """
    if backend is Backend.POSTGRESQL:
        await _write_pg(conn, experiment_id, batch)
    elif backend is Backend.SQLITE:
        await _write_sqlite(conn, experiment_id, batch)
    elif backend is Backend.MYSQL:
        await conn.exec_driver_sql(MYSQL_TRACES, batch.trace_rows)
        location = await _check_experiment(conn, backend, experiment_id, batch.trace_ids)
        await conn.execute(_tags_upsert(backend), _tag_rows(batch.trace_ids, location))
        for chunk in chunks(batch.span_rows, SPAN_CHUNK):
            await conn.exec_driver_sql(MYSQL_SPANS, [(r[0], experiment_id, *r[1:]) for r in chunk])
    else:
        assert_never(backend)


async def _write_pg(conn: AsyncConnection, experiment_id: int, batch: PreparedBatch) -> None:
    rows = batch.trace_rows
    await conn.exec_driver_sql(
        PG_TRACES,
        (experiment_id, [r[0] for r in rows], [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows]),
    )
    location = await _check_experiment(conn, Backend.POSTGRESQL, experiment_id, batch.trace_ids)
    await conn.execute(_tags_upsert(Backend.POSTGRESQL), _tag_rows(batch.trace_ids, location))
    if len(batch.span_rows) >= PG_COPY_MIN and await _copy_new_spans_pg(conn, experiment_id, batch):
        return
    for chunk in chunks(batch.span_rows, SPAN_CHUNK):
        columns = list(zip(*chunk))
        await conn.exec_driver_sql(PG_SPANS, (experiment_id, *(list(c) for c in columns)))


async def _copy_new_spans_pg(conn: AsyncConnection, experiment_id: int, batch: PreparedBatch) -> bool:
    """COPY the spans straight into ``spans`` when none of them is stored yet.

    The common case (re-sent spans are rare) then costs what the driver's COPY
    costs. The COPY runs under a savepoint: if a span of the batch is already
    stored, the unique violation rolls back to it and the caller falls back to the
    upsert, in the same transaction. Returns whether the COPY wrote the batch.
    """
    pg = await Driver.of(conn)  # asyncpg, inside SQLAlchemy's transaction
    records = [(r[0], experiment_id, *r[1:]) for r in batch.span_rows]
    await pg.execute("SAVEPOINT asyncstore_span_copy")
    try:
        await pg.copy("spans", _SPAN_COLUMN_LIST, records)
    except UniqueViolationError:
        await pg.execute("ROLLBACK TO SAVEPOINT asyncstore_span_copy")
        return False
    await pg.execute("RELEASE SAVEPOINT asyncstore_span_copy")
    return True


async def _write_sqlite(conn: AsyncConnection, experiment_id: int, batch: PreparedBatch) -> None:
    """SQLite: straight to aiosqlite, inside the transaction SQLAlchemy began.

    Each aiosqlite call is one trip to its worker thread, as each statement sent
    through SQLAlchemy is (:mod:`asyncstore.sqlite_dbapi`); this path also skips
    SQLAlchemy's statement execution around the trip.
    """
    db = await Driver.of(conn)  # aiosqlite, in the BEGIN IMMEDIATE transaction
    if not db.in_transaction:  # pragma: no cover - guarded by UnitOfWork
        raise InvalidState("log_spans must run inside a transaction")
    await db.executemany(SQLITE_TRACES, batch.trace_rows)
    location = await _check_experiment(conn, Backend.SQLITE, experiment_id, batch.trace_ids, db)
    await conn.execute(_tags_upsert(Backend.SQLITE), _tag_rows(batch.trace_ids, location))
    for chunk in chunks(batch.span_rows, SPAN_CHUNK):
        await db.executemany(SQLITE_SPANS, [(r[0], experiment_id, *r[1:]) for r in chunk])


async def _check_experiment(
    conn: AsyncConnection, backend: Backend, experiment_id: int, trace_ids: list[str], db: Driver | None = None
) -> str | None:
    """Refuse the batch if one of its traces belongs to another experiment.

    ``db``: send :data:`FOREIGN_TRACE` straight to the driver (SQLite's fast path)
    instead of through SQLAlchemy.

    Returns:
        The experiment's artifact location (None if it has none).
    """
    location = None
    for chunk in chunks(trace_ids, TRACE_CHUNK):
        sql, parameters = _foreign_trace_sql(backend, len(chunk)), (*chunk, experiment_id, experiment_id)
        if db is not None:
            found = next(iter(await db.fetchall(sql, parameters)), None)
        else:
            found = (await conn.exec_driver_sql(sql, parameters)).first()
        if found is None:
            continue
        location = found[0]
        if found[1] is not None:
            raise InvalidParameter(
                f"trace {found[1]} belongs to experiment {found[2]}, not {experiment_id}: "
                "log its spans to the experiment it was started in; nothing in the batch was written"
            )
    return location
