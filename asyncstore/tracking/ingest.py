"""log_batch: the statements that write a validated batch, one set per backend.

The caller has locked the run row (``SELECT ... FOR UPDATE``), so writers to one run
are serialised and nothing here can deadlock against another log_batch. A batch
costs a fixed number of statements, whatever its size:

1. params: one read of the stored values of the batch's keys (a different value is
   refused before anything is written), one multi-row insert of the new ones;
2. metrics: one load or insert of every row, duplicates ignored (PostgreSQL's insert: together with 3);
3. latest metrics: one upsert of the batch's greatest (step, timestamp, value) per
   key that replaces a stored row only when the new one ranks higher;
4. tags: one multi-row upsert (and one UPDATE of the run when ``mlflow.runName`` is set).

The metric statements are the hot path (1000 rows a call). The history rows of a
batch of :data:`asyncstore.bulk.BULK_MIN` or more are first written by the server's
load path (:func:`asyncstore.bulk.load_new`, under a savepoint): ``COPY`` on
PostgreSQL, ``LOAD DATA LOCAL INFILE`` on MySQL/MariaDB. A row stored already (a
re-sent batch) makes the load give way, and the statements below write the batch,
duplicates ignored. They are hand-written per backend, with constant SQL text and
bound parameters only, sent through ``exec_driver_sql`` so no per-row parameter
processing happens in SQLAlchemy:

* PostgreSQL: ``INSERT ... SELECT FROM unnest($arrays)``: a fixed number of array
  parameters (asyncpg encodes them in binary), one executor run instead of one
  Bind/Execute per row. The latest-metrics upsert is guarded by ``ON CONFLICT ... DO
  UPDATE ... WHERE (new rank) > (stored rank)``; when the history was not copied, the
  history insert and that upsert are one statement (a data-modifying CTE).
* SQLite: ``executemany`` of a one-row statement (sqlite3 loops in C); the
  latest-metrics upsert has the same guard, with SQLite's row values.
* MySQL/MariaDB: ``executemany`` of a one-row ``INSERT ... ON DUPLICATE KEY UPDATE``,
  which aiomysql rewrites into multi-row statements. ``ON DUPLICATE KEY UPDATE``
  assigns left to right, each assignment seeing the previous ones, so it cannot
  compare a whole stored rank with the new one: the stored latest rows of the batch's
  keys are read first (one SELECT, under the run lock) and only the winners upserted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from typing_extensions import assert_never

from asyncstore import bulk
from asyncstore import dialect as d
from asyncstore import rules as t
from asyncstore.config import Backend
from asyncstore.schema import latest_metrics, runs
from asyncstore.schema import params as param_table
from asyncstore.schema import tags as run_tags
from asyncstore.tracking.batch import RUN_NAME_TAG, Batch, Rank

_COLUMN_NAMES = ("key", "timestamp", "step", "value", "is_nan", "run_uuid")
"""Column order of every metric statement: a metric row, then the run id."""
_COLUMNS = ", ".join(_COLUMN_NAMES)

# The row comparison that decides whether a new latest value replaces the stored one:
# MLflow's (step, timestamp, value), is_nan breaking the last tie. A stored NULL
# timestamp (never written by asyncstore) ranks as 0.
_NEWER = (
    "(excluded.step, excluded.timestamp, excluded.value, excluded.is_nan) "
    "> (lm.step, COALESCE(lm.timestamp, 0), lm.value, lm.is_nan)"
)
_SET_LATEST = "value = excluded.value, timestamp = excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan"

# --- PostgreSQL ---------------------------------------------------------------------
# $1 is the run id; the arrays are the columns of the rows, in row order.

def _pg_unnest(first: int) -> str:
    """The metric rows of arrays ``$first`` .. ``$first+4`` (key, timestamp, step, value, is_nan), run id $1."""
    a = [f"${first + i}" for i in range(5)]
    return (
        f"SELECT u.key, u.ts, u.step, u.value, u.is_nan, $1 FROM unnest({a[0]}::varchar[], {a[1]}::bigint[], "
        f"{a[2]}::bigint[], {a[3]}::float8[], {a[4]}::boolean[]) AS u(key, ts, step, value, is_nan)"
    )


def _pg_latest(first: int) -> str:
    """The latest-metrics upsert of the candidates in arrays ``$first`` .. ``$first+4``."""
    return f"""INSERT INTO latest_metrics AS lm ({_COLUMNS})
{_pg_unnest(first)}
ON CONFLICT (key, run_uuid) DO UPDATE SET {_SET_LATEST}
WHERE {_NEWER}"""


PG_LATEST = _pg_latest(2)
"""The latest candidates alone, after the history went in by COPY."""

# When the history cannot be copied (a row is stored already): one statement, one round
# trip, writes the metric rows ($2-$6) and the latest candidates ($7-$11) (a
# data-modifying CTE always runs to completion).
PG_METRICS_AND_LATEST = f"""
WITH history AS (
    INSERT INTO metrics ({_COLUMNS})
    {_pg_unnest(2)}
    ON CONFLICT (key, timestamp, step, run_uuid, value, is_nan) DO NOTHING
)
{_pg_latest(7)}
"""

# --- SQLite -------------------------------------------------------------------------
SQLITE_METRICS = f"""
INSERT INTO metrics ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (key, timestamp, step, run_uuid, value, is_nan) DO NOTHING
"""

SQLITE_LATEST = f"""
INSERT INTO latest_metrics AS lm ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (key, run_uuid) DO UPDATE SET {_SET_LATEST}
WHERE {_NEWER}
"""

# --- MySQL / MariaDB ----------------------------------------------------------------
# The VALUES (...) clause must stay a single row of %s: aiomysql's executemany
# recognises that shape and sends multi-row statements. A duplicate metric row is
# left as it is (assigning a key column to itself is MySQL's DO NOTHING).
MYSQL_METRICS = """
INSERT INTO metrics (`key`, timestamp, step, value, is_nan, run_uuid) VALUES (%s, %s, %s, %s, %s, %s)
ON DUPLICATE KEY UPDATE `key` = `key`
"""

# Only winners (already compared with the stored rows) are sent.
MYSQL_LATEST = """
INSERT INTO latest_metrics (`key`, timestamp, step, value, is_nan, run_uuid) VALUES (%s, %s, %s, %s, %s, %s)
ON DUPLICATE KEY UPDATE value = VALUES(value), timestamp = VALUES(timestamp), step = VALUES(step),
    is_nan = VALUES(is_nan)
"""


async def write_batches(
    conn: AsyncConnection,
    backend: Backend,
    items: Sequence[tuple[str, Batch]],
    stored: Mapping[tuple[str, str], str],
) -> None:
    """Write validated batches to runs whose rows the caller has locked, in one transaction.

    ``items`` are (run id, batch) pairs in call order: one log_batch call, or the
    calls of a SQLite group commit. The caller has checked their params against the
    ``stored`` ones (:func:`stored_params`) and against earlier items: a param logged
    before (with the same value) is not written again. Order: params, metrics, latest
    metrics, tags; rows in sorted key order. The params, metrics and latest metrics
    of all items go in the same few statements (PostgreSQL: one metrics statement per
    item); tags go per item, so an item's tags win over an earlier item's, as when
    the calls run one after the other.
    """
    logged = set(stored)
    new_params = []
    for run_id, batch in items:
        for key, value in sorted(batch.params.items()):
            if (run_id, key) not in logged:
                logged.add((run_id, key))
                new_params.append({"run_uuid": run_id, "key": key, "value": value})
    if new_params:
        await conn.execute(insert(param_table), new_params)
    if any(batch.metric_rows for _, batch in items):
        await _write_metrics(conn, backend, [(run_id, batch) for run_id, batch in items if batch.metric_rows])
    for run_id, batch in items:
        if batch.tags:
            await conn.execute(
                d.upsert(backend, run_tags, ("key", "run_uuid"), ("value",)),
                [{"run_uuid": run_id, "key": k, "value": v} for k, v in sorted(batch.tags.items())],
            )
            if RUN_NAME_TAG in batch.tags:
                await conn.execute(update(runs).where(runs.c.run_uuid == run_id).values(name=batch.tags[RUN_NAME_TAG]))


async def stored_params(conn: AsyncConnection, items: Sequence[tuple[str, Batch]]) -> dict[tuple[str, str], str]:
    """The stored values of the params the batches log, by (run id, key): one SELECT."""
    wanted = {(run_id, key) for run_id, batch in items for key in batch.params}
    if not wanted:
        return {}
    p = param_table.c
    found = await conn.execute(
        select(p.run_uuid, p.key, p.value).where(
            p.run_uuid.in_(sorted({run_id for run_id, _ in wanted})), p.key.in_(sorted({key for _, key in wanted}))
        )
    )
    return {(row.run_uuid, row.key): row.value for row in found if (row.run_uuid, row.key) in wanted}


async def _write_metrics(conn: AsyncConnection, backend: Backend, items: Sequence[tuple[str, Batch]]) -> None:
    history = [(*row, run_id) for run_id, batch in items for row in batch.metric_rows]
    loaded = await bulk.load_new(conn, backend, "metrics", _COLUMN_NAMES, history)
    if backend is Backend.POSTGRESQL:
        for run_id, batch in items:
            latest = sorted(batch.latest.items())
            winners = [[k for k, _ in latest], [r[1] for _, r in latest], [r[0] for _, r in latest],
                       [r[2] for _, r in latest], [r[3] for _, r in latest]]
            if loaded:
                await conn.exec_driver_sql(PG_LATEST, (run_id, *winners))
            else:
                rows = [list(c) for c in zip(*batch.metric_rows)]
                await conn.exec_driver_sql(PG_METRICS_AND_LATEST, (run_id, *rows, *winners))
    elif backend is Backend.SQLITE:
        await conn.exec_driver_sql(SQLITE_METRICS, history)
        await conn.exec_driver_sql(
            SQLITE_LATEST,
            [(k, r[1], r[0], r[2], r[3], run_id) for run_id, batch in items for k, r in sorted(batch.latest.items())],
        )
    elif backend is Backend.MYSQL:
        if not loaded:
            await conn.exec_driver_sql(MYSQL_METRICS, history)
        for run_id, batch in items:
            latest = sorted(batch.latest.items())
            current = await _stored_latest(conn, run_id, [k for k, _ in latest])
            winners = [(k, r[1], r[0], r[2], r[3], run_id) for k, r in latest if k not in current or r > current[k]]
            if winners:
                await conn.exec_driver_sql(MYSQL_LATEST, winners)
    else:  # pragma: no cover - Backend is exhaustive
        assert_never(backend)


async def _stored_latest(conn: AsyncConnection, run_id: str, keys: list[str]) -> dict[str, Rank]:
    """The stored (step, timestamp, value, is_nan) of some metric keys of a run."""
    lm = latest_metrics.c
    found = await conn.execute(
        select(lm.key, lm.step, lm.timestamp, lm.value, lm.is_nan).where(lm.run_uuid == run_id, lm.key.in_(keys))
    )
    return {r.key: (r.step, r.timestamp or 0, r.value, bool(r.is_nan)) for r in found}


__all__ = ["stored_params", "write_batches"]
