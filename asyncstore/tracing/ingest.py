"""Bulk span ingestion: the hand-written statements, one set per backend.

A batch is written with a bounded number of statements, whatever its size:

1. one upsert of the batch's ``trace_info`` rows, in sorted ``request_id`` order,
   that creates missing traces and widens existing ones (earliest start, latest end,
   state from the root span while the trace is IN_PROGRESS). The upsert takes the
   trace row locks in sorted order, so concurrent ingesters on PostgreSQL and
   MySQL queue behind each other instead of deadlocking;
2. one lookup (:data:`LOOKUP`, per chunk of ``TRACE_CHUNK`` trace ids) that checks no
   trace of the batch belongs to another experiment, reads the experiment's artifact
   location and, for the traces whose spans carry a token usage or a cost, what MLflow's
   rules need (below);
3. one upsert of the trace tags: those MLflow's ``log_spans`` writes
   (:mod:`asyncstore.tracing.keys`: ``mlflow.trace.spansLocation`` = ``TRACKING_STORE``
   on every trace of the batch, ``mlflow.artifactLocation`` on a trace that has none)
   and those it takes from the spans (:mod:`asyncstore.tracing.derive`: the root span's
   ``mlflow.traceTag.*`` attributes, the span resource), which replace stored values;
4. one upsert of the span rows (sorted by trace_id, span_id) per chunk of
   ``SPAN_CHUNK`` spans: re-sent spans overwrite the stored row.

The values MLflow derives from spans (:mod:`asyncstore.tracing.derive`) ride in those
rows: each span row's costs, model and provider (left out of the statement when no span
of the batch has them); each trace row's name, session, previews, token counts and
costs; and, as MLflow counts them, the trace row counts the calls that wrote its spans
(``db_payload_generation``). On an existing trace, the upsert follows MLflow 3.17's
rules: the batch's trace name replaces the stored one; the session and the previews
only fill an empty column. Token counts and costs are left to step 2, because MLflow
decides them from the trace as stored before the batch: it keeps them when
``start_trace`` set them (metadata ``mlflow.trace.infoFinalized`` and one of them set),
and otherwise sums them over the whole span tree, stored spans included, so that a
parent totalling children logged by an earlier call is not counted twice
(:func:`asyncstore.tracing.derive.settled_analytics`). That needs the stored spans,
read by the lookup after the upsert has locked the trace rows, so a concurrent
ingester's committed spans are seen. A new trace's row already holds the batch's sums;
only when the sums differ from what a trace holds (a trace that had spans, or was
started by ``start_trace`` without them) does one more statement, one bulk UPDATE for
the batch, write them. Likewise a batch whose spans carry ``user.id`` sends one insert
of the request metadata ``mlflow.trace.user`` for the traces that have none.

Per backend, the fastest path measured by ``asyncstore bench --workload log_spans``
(the calls that bypass SQLAlchemy go through :class:`asyncstore.driver.Driver`, so
SQLAlchemy's statement events and ``echo`` still see them):

Batches of :data:`asyncstore.bulk.BULK_MIN` spans or more are first written by the
server's load path (:func:`asyncstore.bulk.load_new`, under a savepoint): ``COPY``
on PostgreSQL (about a fifth faster than the upsert for 1,000-span batches), ``LOAD
DATA LOCAL INFILE ... REPLACE`` on MySQL/MariaDB (REPLACE gives a re-sent span the
upsert's outcome: the whole row replaced, derived columns it lacks NULL). When the
load gives way (a re-sent span on PostgreSQL; any warning on MySQL, such as a value
the column cannot hold; LOCAL INFILE refused or turned off), the batch takes the
upsert path in the same transaction:

* PostgreSQL: ``INSERT ... SELECT FROM unnest($arrays) ON CONFLICT DO UPDATE``, one
  prepared statement with a fixed number of array parameters (one per column), so
  the 32767 bind-parameter limit never applies.
* SQLite: ``executemany`` of a one-row upsert, sent as multi-row INSERTs
  (:mod:`asyncstore.sqlite_dbapi`). The writes whose results the batch does not need
  ride in the trip of its next statement (:meth:`asyncstore.driver.Driver.defer`):
  the trace upsert goes into aiosqlite's thread with the lookup, the analytics
  update, tags, user metadata and spans together, two trips in all.
* MySQL/MariaDB: ``executemany`` of a one-row ``INSERT ... ON DUPLICATE KEY UPDATE``,
  which aiomysql rewrites into multi-row statements of at most ~1 MB each (below
  MariaDB's 16 MB ``max_allowed_packet``).

``duration_ns`` is a generated column and is never written.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, literal_column
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from typing_extensions import assert_never

from asyncstore import bulk
from asyncstore.config import Backend
from asyncstore.dialect import chunks, upsert
from asyncstore.driver import Driver
from asyncstore.errors import InvalidParameter, InvalidState
from asyncstore.schema import trace_request_metadata, trace_tags
from asyncstore.tracing import analytics, derive, keys
from asyncstore.tracing.rows import PreparedBatch, SpanRow

SPAN_CHUNK = 5000
"""Spans per statement: bounds the size of one message (~5 MB of 1 KB spans)."""
TRACE_CHUNK = 2000
"""Trace ids per IN list in the lookup (at most twice that many binds, far below every limit)."""

# Column, PostgreSQL array type: the span row (rows.SpanRow) with the experiment id second.
_SPAN_FIELDS = (
    ("trace_id", "varchar"), ("experiment_id", ""), ("span_id", "varchar"), ("parent_span_id", "varchar"),
    ("name", "text"), ("type", "varchar"), ("status", "varchar"), ("start_time_unix_nano", "bigint"),
    ("end_time_unix_nano", "bigint"), ("input_cost", "float8"), ("output_cost", "float8"),
    ("total_cost", "float8"), ("model_name", "varchar"), ("model_provider", "varchar"), ("content", "text"),
)
_DERIVED_SPAN_COLUMNS = ("input_cost", "output_cost", "total_cost", "model_name", "model_provider")
_PLAIN_SPAN_FIELDS = tuple(f for f in _SPAN_FIELDS if f[0] not in _DERIVED_SPAN_COLUMNS)
"""The span row without the derived columns: what is written when no span of the batch
derives one (they are then left NULL, and not bound: binding five NULLs per row costs
SQLite's executemany about a tenth of its speed)."""
_SPAN_OVERWRITE = tuple(c for c, _ in _SPAN_FIELDS[3:])
"""Everything but the key and the experiment: a re-sent span replaces the stored row."""


def _span_overwrite(fields: Sequence[tuple[str, str]], new: str) -> str:
    """The SET clause for a re-sent span, ``new`` formatting a column of the sent row: every
    column is replaced, a derived column not written (the span derives none) by NULL."""
    written = {c for c, _ in fields}
    return ", ".join(f"{c} = {new.format(c) if c in written else 'NULL'}" for c in _SPAN_OVERWRITE)


def span_records(rows: Sequence[SpanRow], experiment_id: int, derived: bool) -> list[tuple[Any, ...]]:
    """The span rows as written: with the experiment id, and the derived columns if ``derived``
    (without them, the columns of :data:`_PLAIN_SPAN_FIELDS`, in order)."""
    if derived:
        return [(r[0], experiment_id, *r[1:]) for r in rows]
    return [(r[0], experiment_id, *r[1:8], r[13]) for r in rows]


# The trace row (rows.TraceRow), likewise.
_TRACE_FIELDS = (
    ("request_id", "varchar"), ("experiment_id", ""), ("timestamp_ms", "bigint"), ("execution_time_ms", "bigint"),
    ("status", "varchar"), ("trace_name", "varchar"), ("session_id", "varchar"), ("request_preview", "varchar"),
    ("response_preview", "varchar"),
    *((c, "bigint") for c in analytics.TOKEN_COLUMNS), *((c, "float8") for c in analytics.COST_COLUMNS),
)
_TRACE_COLUMNS = ", ".join(c for c, _ in _TRACE_FIELDS) + ", db_payload_generation"
"""The trace row's columns, then MLflow's count of the calls that wrote the trace's spans
(its guard against archiving a trace while spans are written): 1 for a new trace."""
_ANALYTICS_TYPES = tuple(t for c, t in _TRACE_FIELDS if c in derive.ANALYTICS_COLUMNS)


def _trace_merge(old: str, new: str) -> str:
    """MLflow's rules for the derived columns of an existing trace, ``old`` and ``new``
    formatting a column of the stored row and of the batch's (token counts and costs:
    see the module docstring); and one more call counted in ``db_payload_generation``."""
    return f"""db_payload_generation = {old.format("db_payload_generation")} + 1,
    trace_name = COALESCE({new.format("trace_name")}, {old.format("trace_name")}),
    session_id = COALESCE({old.format("session_id")}, {new.format("session_id")}),
    request_preview = COALESCE({old.format("request_preview")}, {new.format("request_preview")}),
    response_preview = COALESCE({old.format("response_preview")}, {new.format("response_preview")})"""


def _pg_unnest(fields: Sequence[tuple[str, str]], first: int) -> tuple[str, str, str]:
    """(the unnest arguments ``$first::type[], ...``, the alias list, the select list ``u.col, ...``)
    of the array columns among ``fields`` (those with a type)."""
    arrays = [(c, t) for c, t in fields if t]
    args = ", ".join(f"${first + i}::{t}[]" for i, (_, t) in enumerate(arrays))
    aliases = ", ".join(c for c, _ in arrays)
    select = ", ".join("$1" if not t else f"u.{c}" for c, t in fields)
    return args, aliases, select


# --- PostgreSQL ---------------------------------------------------------------------
# $1 is the experiment id; the arrays are the columns of the rows, in row order.
def _pg_spans(fields: Sequence[tuple[str, str]]) -> str:
    args, aliases, select = _pg_unnest(fields, 2)
    return f"""
INSERT INTO spans ({", ".join(c for c, _ in fields)})
SELECT {select}
FROM unnest({args}) WITH ORDINALITY AS u({aliases}, n)
ORDER BY u.n
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    {_span_overwrite(fields, "excluded.{}")}
"""


PG_SPANS = {True: _pg_spans(_SPAN_FIELDS), False: _pg_spans(_PLAIN_SPAN_FIELDS)}
"""Keyed by whether the batch derives span columns (:data:`_PLAIN_SPAN_FIELDS`)."""

# Widening: the new range is [min(old start, new start), max(old end, new end)];
# the state follows the root span only while the stored trace is IN_PROGRESS.
_args, _aliases, _select = _pg_unnest(_TRACE_FIELDS, 2)
PG_TRACES = f"""
INSERT INTO trace_info AS t ({_TRACE_COLUMNS})
SELECT {_select}, 1
FROM unnest({_args}) WITH ORDINALITY AS u({_aliases}, n)
ORDER BY u.n
ON CONFLICT (request_id) DO UPDATE SET
    execution_time_ms = GREATEST(t.timestamp_ms + COALESCE(t.execution_time_ms, 0),
                                 excluded.timestamp_ms + excluded.execution_time_ms)
                        - LEAST(t.timestamp_ms, excluded.timestamp_ms),
    timestamp_ms = LEAST(t.timestamp_ms, excluded.timestamp_ms),
    status = CASE WHEN t.status = 'IN_PROGRESS' THEN excluded.status ELSE t.status END,
    {_trace_merge("t.{}", "excluded.{}")}
"""

# A trace's settled token counts and costs ($1 the trace ids, then one array per column).
PG_ANALYTICS = f"""
UPDATE trace_info AS t SET {", ".join(f"{c} = u.{c}" for c in derive.ANALYTICS_COLUMNS)}
FROM unnest($1::varchar[], {", ".join(f"${i + 2}::{t}[]" for i, t in enumerate(_ANALYTICS_TYPES))})
     AS u(request_id, {", ".join(derive.ANALYTICS_COLUMNS)})
WHERE t.request_id = u.request_id
"""
del _args, _aliases, _select

# --- SQLite -------------------------------------------------------------------------
def _sqlite_spans(fields: Sequence[tuple[str, str]]) -> str:
    return f"""
INSERT INTO spans ({", ".join(c for c, _ in fields)}) VALUES ({", ".join("?" * len(fields))})
ON CONFLICT (trace_id, span_id) DO UPDATE SET
    {_span_overwrite(fields, "excluded.{}")}
"""


SQLITE_SPANS = {True: _sqlite_spans(_SPAN_FIELDS), False: _sqlite_spans(_PLAIN_SPAN_FIELDS)}

SQLITE_TRACES = f"""
INSERT INTO trace_info ({_TRACE_COLUMNS}) VALUES ({", ".join("?" * (len(_TRACE_FIELDS) + 1))})
ON CONFLICT (request_id) DO UPDATE SET
    execution_time_ms = MAX(trace_info.timestamp_ms + COALESCE(trace_info.execution_time_ms, 0),
                            excluded.timestamp_ms + excluded.execution_time_ms)
                        - MIN(trace_info.timestamp_ms, excluded.timestamp_ms),
    timestamp_ms = MIN(trace_info.timestamp_ms, excluded.timestamp_ms),
    status = CASE WHEN trace_info.status = 'IN_PROGRESS' THEN excluded.status ELSE trace_info.status END,
    {_trace_merge("trace_info.{}", "excluded.{}")}
"""

SQLITE_ANALYTICS = f"""
UPDATE trace_info SET {", ".join(f"{c} = ?" for c in derive.ANALYTICS_COLUMNS)} WHERE request_id = ?
"""

# --- MySQL / MariaDB ----------------------------------------------------------------
# The VALUES (...) clause must stay a single row of %s: aiomysql's executemany
# recognises that shape and sends multi-row statements.
def _mysql_spans(fields: Sequence[tuple[str, str]]) -> str:
    return f"""
INSERT INTO spans ({", ".join(c for c, _ in fields)}) VALUES ({", ".join(["%s"] * len(fields))})
ON DUPLICATE KEY UPDATE {_span_overwrite(fields, "VALUES({})")}
"""


MYSQL_SPANS = {True: _mysql_spans(_SPAN_FIELDS), False: _mysql_spans(_PLAIN_SPAN_FIELDS)}

# MySQL assigns left to right and later assignments see earlier results, so the
# duration is computed before timestamp_ms changes (the derived columns' rules read
# only their own column).
MYSQL_TRACES = f"""
INSERT INTO trace_info ({_TRACE_COLUMNS}) VALUES ({", ".join(["%s"] * (len(_TRACE_FIELDS) + 1))})
ON DUPLICATE KEY UPDATE
    execution_time_ms = GREATEST(timestamp_ms + COALESCE(execution_time_ms, 0),
                                 VALUES(timestamp_ms) + VALUES(execution_time_ms))
                        - LEAST(timestamp_ms, VALUES(timestamp_ms)),
    timestamp_ms = LEAST(timestamp_ms, VALUES(timestamp_ms)),
    status = IF(status = 'IN_PROGRESS', VALUES(status), status),
    {_trace_merge("{}", "VALUES({})")}
"""


def _mysql_analytics(n: int) -> str:
    """The settled token counts and costs of ``n`` traces: one UPDATE joined to their rows of
    ``%s`` (trace id, then the columns)."""
    row = ", ".join(["%s"] * (1 + len(derive.ANALYTICS_COLUMNS)))
    first = ", ".join(f"%s AS {c}" for c in ("request_id", *derive.ANALYTICS_COLUMNS))
    rows = " UNION ALL ".join([f"SELECT {first}", *[f"SELECT {row}"] * (n - 1)])
    return (
        f"UPDATE trace_info t JOIN ({rows}) u ON t.request_id = u.request_id "
        f"SET {', '.join(f't.{c} = u.{c}' for c in derive.ANALYTICS_COLUMNS)}"
    )


# --- every backend ------------------------------------------------------------------
# The experiment's artifact location, beside the first trace of a chunk of the batch's
# trace ids that belongs to another experiment (NULLs when none does); {ids} is one
# placeholder per id, {experiment} and {experiment2} the batch's experiment. When the
# chunk has traces whose spans carry a token usage or a cost ({derived_ids}), one row per
# such trace and stored span (NULL span columns when it has none): whether start_trace
# wrote it, its token counts and costs, and the stored span's parent and content.
LOOKUP = """
SELECT e.artifact_location, f.request_id, f.experiment_id{derived_columns}
FROM experiments e
LEFT JOIN (
    SELECT request_id, experiment_id FROM trace_info
    WHERE request_id IN ({ids}) AND experiment_id <> {experiment}
    LIMIT 1
) f ON 1 = 1{derived_joins}
WHERE e.experiment_id = {experiment2}
"""
_LOOKUP_DERIVED_COLUMNS = (
    f", d.request_id, d.finalized, {', '.join(f'd.{c}' for c in derive.ANALYTICS_COLUMNS)}, "
    "s.span_id, s.parent_span_id, s.content"
)
_LOOKUP_DERIVED_JOINS = f"""
LEFT JOIN (
    SELECT t.request_id, {", ".join(f"t.{c}" for c in derive.ANALYTICS_COLUMNS)},
        CASE WHEN EXISTS (
            SELECT 1 FROM trace_request_metadata m
            WHERE m.{{key}} = '{keys.INFO_FINALIZED}' AND m.request_id = t.request_id
        ) THEN 1 ELSE 0 END AS finalized
    FROM trace_info t
    WHERE t.request_id IN ({{derived_ids}})
) d ON 1 = 1
LEFT JOIN spans s ON s.trace_id = d.request_id AND s.content <> ''"""


def _lookup_sql(backend: Backend, n: int, m: int) -> str:
    """:data:`LOOKUP` for ``n`` trace ids of which ``m`` carry usage or cost, in the
    placeholders of the backend's driver (parameters: the ids, the experiment id, the
    ``m`` ids, the experiment id)."""
    if backend is Backend.POSTGRESQL:
        marks = [f"${i}" for i in range(1, n + m + 3)]
    elif backend is Backend.SQLITE:
        marks = ["?"] * (n + m + 2)
    elif backend is Backend.MYSQL:
        marks = ["%s"] * (n + m + 2)
    else:
        assert_never(backend)
    columns = joins = ""
    if m:
        columns = _LOOKUP_DERIVED_COLUMNS
        joins = _LOOKUP_DERIVED_JOINS.format(
            key="`key`" if backend is Backend.MYSQL else '"key"', derived_ids=", ".join(marks[n + 1:n + m + 1])
        )
    return LOOKUP.format(
        derived_columns=columns, derived_joins=joins, ids=", ".join(marks[:n]), experiment=marks[n],
        experiment2=marks[n + m + 1],
    )


@functools.cache  # built once per backend
def _tags_upsert(backend: Backend) -> Any:
    """Insert the trace tags of :func:`_tag_rows`; on a conflict the new value replaces the
    stored one, except for the artifact location, which once set stays what it is (as in MLflow)."""
    return upsert(
        backend,
        trace_tags,
        ["key", "request_id"],
        [],
        merge=lambda new: {
            # The key as a literal in the SQL: a bound parameter in ON DUPLICATE KEY UPDATE
            # defeats aiomysql's multi-row rewrite of executemany.
            "value": case((new.key == literal_column(f"'{keys.ARTIFACT_LOCATION}'"), trace_tags.c.value), else_=new.value)
        },
    )


def _sqlite_text(statement: Any) -> str:
    """An insert of (key, value, request_id) rows as SQLite text with ``?`` in that order,
    for :meth:`Driver.defer <asyncstore.driver.Driver.defer>`."""
    compiled = statement.compile(dialect=sqlite_dialect.dialect(paramstyle="qmark"))
    if tuple(compiled.positiontup or ()) != ("key", "value", "request_id"):  # pragma: no cover - a schema change
        raise InvalidState(f"unexpected parameters {compiled.positiontup} in {compiled.string}")
    return str(compiled.string)


SQLITE_TAGS = _sqlite_text(_tags_upsert(Backend.SQLITE))
SQLITE_USERS = _sqlite_text(upsert(Backend.SQLITE, trace_request_metadata, ["key", "request_id"], []))


def _tag_rows(batch: PreparedBatch, artifact_location: str | None) -> list[dict[str, str]]:
    """The tags MLflow's ``log_spans`` writes for the batch's traces, in primary-key order
    (key, request_id), so concurrent ingesters lock them in the same order: its own, then
    those taken from the spans (which may replace its own, as in MLflow)."""
    rows: list[dict[str, str]] = []
    for trace_id in batch.trace_ids:
        tags = {keys.SPANS_LOCATION: keys.TRACKING_STORE}
        if artifact_location is not None:
            tags[keys.ARTIFACT_LOCATION] = keys.trace_artifact_location(artifact_location, trace_id)
        tags.update(batch.derived[trace_id].tags)
        rows.extend({"key": k, "value": v, "request_id": trace_id} for k, v in tags.items())
    rows.sort(key=lambda r: (r["key"], r["request_id"]))
    return rows


async def write_batch(conn: AsyncConnection, backend: Backend, experiment_id: int, batch: PreparedBatch) -> None:
    """Write a prepared batch in the caller's transaction (the statements of the module docstring).

    Raises:
        InvalidParameter: a trace of the batch belongs to another experiment.
    """
    db = None
    if backend is Backend.SQLITE:
        # SQLite: straight to aiosqlite, inside the transaction SQLAlchemy began. Each
        # aiosqlite call is one trip to its worker thread, as each statement sent through
        # SQLAlchemy is (asyncstore.sqlite_dbapi); this path also skips SQLAlchemy's
        # statement execution around the trip.
        db = await Driver.of(conn)  # aiosqlite, in the BEGIN IMMEDIATE transaction
        if not db.in_transaction:  # pragma: no cover - guarded by UnitOfWork
            raise InvalidState("log_spans must run inside a transaction")
    await _upsert_traces(conn, backend, batch, db)
    location, stored = await _lookup(conn, backend, experiment_id, batch, db)
    await _settle_analytics(conn, backend, batch, stored, db)
    await _write_tags(conn, backend, batch, location, db)
    await _write_spans(conn, backend, experiment_id, batch, db)
    if db is not None:  # SQLite: what was deferred since the lookup, in one trip
        await db.flush()


async def _write_tags(
    conn: AsyncConnection, backend: Backend, batch: PreparedBatch, location: str | None, db: Driver | None
) -> None:
    """The trace tags of :func:`_tag_rows`, and the user metadata of the traces whose spans name one."""
    tags = _tag_rows(batch, location)
    users = [
        {"key": derive.USER_METADATA, "request_id": tid, "value": user}
        for tid in batch.trace_ids if (user := batch.derived[tid].user)
    ]
    if db is not None:  # SQLite: deferred, sent with the spans
        db.defer(SQLITE_TAGS, [(r["key"], r["value"], r["request_id"]) for r in tags])
        if users:
            db.defer(SQLITE_USERS, [(r["key"], r["value"], r["request_id"]) for r in users])
        return
    await conn.execute(_tags_upsert(backend), tags)
    if users:  # as in MLflow, a user already recorded is kept
        await conn.execute(upsert(backend, trace_request_metadata, ["key", "request_id"], []), users)


async def _upsert_traces(conn: AsyncConnection, backend: Backend, batch: PreparedBatch, db: Driver | None) -> None:
    rows = batch.trace_rows
    if backend is Backend.POSTGRESQL:
        columns = list(zip(*rows))
        await conn.exec_driver_sql(PG_TRACES, (rows[0][1], list(columns[0]), *(list(c) for c in columns[2:])))
    elif backend is Backend.SQLITE:
        assert db is not None
        db.defer(SQLITE_TRACES, [(*row, 1) for row in rows])  # sent with the lookup
    elif backend is Backend.MYSQL:
        # The payload generation (1) as a parameter: VALUES of placeholders only is what
        # aiomysql rewrites into multi-row statements (else it sends a statement per row).
        await conn.exec_driver_sql(MYSQL_TRACES, [(*row, 1) for row in rows])
    else:
        assert_never(backend)


async def _write_spans(
    conn: AsyncConnection, backend: Backend, experiment_id: int, batch: PreparedBatch, db: Driver | None
) -> None:
    derived = batch.derives_span_columns
    fields = _SPAN_FIELDS if derived else _PLAIN_SPAN_FIELDS
    records = span_records(batch.span_rows, experiment_id, derived)
    # REPLACE on MySQL: a re-sent span overwrites the stored row, as the upsert does.
    if await bulk.load_new(conn, backend, "spans", [c for c, _ in fields], records, replace=True):
        return
    for chunk in chunks(records, SPAN_CHUNK):
        if backend is Backend.POSTGRESQL:
            columns = list(zip(*chunk))
            del columns[1]  # the experiment id is $1
            await conn.exec_driver_sql(PG_SPANS[derived], (experiment_id, *(list(c) for c in columns)))
        elif backend is Backend.SQLITE:
            assert db is not None
            db.defer(SQLITE_SPANS[derived], chunk)  # write_batch flushes
        elif backend is Backend.MYSQL:
            await conn.exec_driver_sql(MYSQL_SPANS[derived], chunk)
        else:
            assert_never(backend)


async def _lookup(
    conn: AsyncConnection, backend: Backend, experiment_id: int, batch: PreparedBatch, db: Driver | None
) -> tuple[str | None, dict[str, derive.StoredTrace]]:
    """Refuse the batch if one of its traces belongs to another experiment; read what the
    rest of the batch needs (:data:`LOOKUP`).

    ``db``: send the lookup straight to the driver (SQLite's fast path) instead of
    through SQLAlchemy.

    Returns:
        The experiment's artifact location (None if it has none), and each trace whose
        spans in the batch carry a token usage or a cost as it is stored, with its stored
        spans (those the batch sends again left out).
    """
    location = None
    stored: dict[str, derive.StoredTrace] = {}
    for chunk in chunks(batch.trace_ids, TRACE_CHUNK):
        carrying = [t for t in chunk if batch.derived[t].carries]
        sql = _lookup_sql(backend, len(chunk), len(carrying))
        parameters = (*chunk, experiment_id, *carrying, experiment_id)
        if db is not None:
            rows = await db.fetchall(sql, parameters)
        else:
            rows = list((await conn.exec_driver_sql(sql, parameters)).all())
        if not rows:
            continue
        location = rows[0][0]
        if rows[0][1] is not None:
            raise InvalidParameter(
                f"trace {rows[0][1]} belongs to experiment {rows[0][2]}, not {experiment_id}: "
                "log its spans to the experiment it was started in; nothing in the batch was written"
            )
        if carrying:
            for row in rows:
                if row[3] is not None:
                    _take_stored_row(stored, batch, row[3:])
    return location, stored


def _take_stored_row(stored: dict[str, derive.StoredTrace], batch: PreparedBatch, row: Sequence[Any]) -> None:
    """Add one lookup row (trace id, finalized, the nine columns, span id, parent, content)."""
    trace_id, finalized, *values = row
    span_id, parent, text = values[-3:]
    trace = stored.get(trace_id)
    if trace is None:
        trace = stored[trace_id] = derive.StoredTrace(bool(finalized), tuple(values[:-3]))
    if span_id is None or span_id in batch.derived[trace_id].span_ids:
        return  # no stored span; or one the batch sends again, which counts as the batch says
    nodes = derive.stored_nodes(span_id, parent, text)
    if nodes is not None:
        trace.usage_nodes.append(nodes[0])
        trace.cost_nodes.append(nodes[1])


async def _settle_analytics(
    conn: AsyncConnection, backend: Backend, batch: PreparedBatch, stored: dict[str, derive.StoredTrace],
    db: Driver | None,
) -> None:
    """Write the token counts and costs MLflow's rules give the traces of the batch, where
    they differ from what the trace holds: one statement for the batch, or none."""
    updates = []
    for trace_id in sorted(stored):
        settled = derive.settled_analytics(batch.derived[trace_id], stored[trace_id])
        if settled != stored[trace_id].current:
            updates.append((trace_id, *settled))
    if not updates:
        return
    if backend is Backend.POSTGRESQL:
        await conn.exec_driver_sql(PG_ANALYTICS, tuple(list(c) for c in zip(*updates)))
    elif backend is Backend.SQLITE:
        assert db is not None
        db.defer(SQLITE_ANALYTICS, [(*u[1:], u[0]) for u in updates])
    elif backend is Backend.MYSQL:
        for chunk in chunks(updates, TRACE_CHUNK):
            await conn.exec_driver_sql(_mysql_analytics(len(chunk)), tuple(v for u in chunk for v in u))
    else:
        assert_never(backend)
