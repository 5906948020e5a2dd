"""Reading runs: rows to entities, loading run data in bulk, and run search.

Search filters and sorts in the database. Each metric / param / tag clause is an
``EXISTS`` on ``latest_metrics`` / ``params`` / ``tags`` (primary-key lookups per run);
each order-by key on one of them is a ``LEFT JOIN`` on (run, key). Ordering follows
MLflow: real values first, then NaN, then missing; ties by ``start_time DESC`` and
``run_id``, so offset pages are stable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Boolean,
    CompoundSelect,
    Integer,
    Select,
    String,
    and_,
    any_,
    asc,
    bindparam,
    case,
    desc,
    exists,
    literal_column,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement, FromClause

from asyncstore import dialect as d
from asyncstore import filters as f
from asyncstore import rules as t
from asyncstore.conditions import clause_comparison, compare, view_condition
from asyncstore.config import Backend
from asyncstore.entities import (
    LifecycleStage,
    Metric,
    RunData,
    RunInfo,
    RunStatus,
    ViewType,
)
from asyncstore.schema import Double, latest_metrics, params, runs, tags

# Filter/order-by attribute key -> runs column name.
ATTRIBUTE_COLUMNS: Mapping[str, str] = {
    "run_id": "run_uuid",
    "run_name": "name",
    "status": "status",
    "user_id": "user_id",
    "artifact_uri": "artifact_uri",
    "start_time": "start_time",
    "end_time": "end_time",
}
_STRING_ATTRIBUTES = frozenset({"run_id", "run_name", "status", "user_id", "artifact_uri"})


class RunRow(Protocol):
    """What :func:`run_info` reads: a ``runs`` row, or the values of one just inserted."""

    run_uuid: str
    experiment_id: int
    name: str | None
    user_id: str | None
    status: str
    start_time: int | None
    end_time: int | None
    lifecycle_stage: str
    artifact_uri: str | None
    deleted_time: int | None


def run_info(row: RunRow) -> RunInfo:
    """A :class:`RunInfo` from a ``runs`` row."""
    return RunInfo(
        run_id=row.run_uuid,
        experiment_id=str(row.experiment_id),
        run_name=row.name,
        user_id=row.user_id,
        status=RunStatus(row.status),
        start_time=row.start_time,
        end_time=row.end_time,
        lifecycle_stage=LifecycleStage(row.lifecycle_stage),
        artifact_uri=row.artifact_uri,
        deleted_time=row.deleted_time,
    )


_KIND_METRIC, _KIND_PARAM, _KIND_TAG = 0, 1, 2
_RUN_IDS: BindParameter[str] = bindparam("run_ids", expanding=True)
_PG_RUN_IDS = bindparam("run_ids", type_=ARRAY(String))


def _data_query(backend: Backend) -> CompoundSelect[Any]:
    """Latest metrics, params and tags of some runs as one ``UNION ALL`` (one round trip).

    Columns: kind (0 metric, 1 param, 2 tag), run_uuid, key, num (metric value),
    timestamp, step, is_nan, text (param or tag value). On PostgreSQL the run ids are
    one array parameter (``= ANY``), so the statement is prepared once whatever the
    page size; elsewhere an expanding ``IN`` list of a bounded number of ids.
    """
    ids: Any = _PG_RUN_IDS if backend is Backend.POSTGRESQL else _RUN_IDS

    def of(column: ColumnElement[Any]) -> ColumnElement[bool]:
        return column == any_(ids) if backend is Backend.POSTGRESQL else column.in_(ids)

    lm = latest_metrics.c
    no_text = type_coerce(null(), String)
    return union_all(
        select(
            literal_column(str(_KIND_METRIC), Integer).label("kind"), lm.run_uuid, lm.key, lm.value.label("num"),
            lm.timestamp, lm.step, lm.is_nan, no_text.label("text"),
        ).where(of(lm.run_uuid)),
        *(
            select(literal_column(str(kind), Integer), table.c.run_uuid, table.c.key, type_coerce(null(), Double),
                   type_coerce(null(), BigInteger), type_coerce(null(), BigInteger), type_coerce(null(), Boolean),
                   table.c.value).where(of(table.c.run_uuid))
            for kind, table in ((_KIND_PARAM, params), (_KIND_TAG, tags))
        ),
    )


_DATA_QUERIES = {backend: _data_query(backend) for backend in Backend}
_IN_CHUNK = {
    Backend.SQLITE: d.IN_CHUNK,
    # MariaDB turns an IN list of in_predicate_conversion_threshold (1000) values or
    # more into a join with a derived table, which it then answers with a full scan.
    Backend.MYSQL: 500,
    Backend.POSTGRESQL: d.IN_CHUNK,  # unused: one array parameter
}


async def load_run_data(conn: AsyncConnection, backend: Backend, run_ids: Sequence[str]) -> dict[str, RunData]:
    """Latest metrics, params and tags of many runs: one query (per 500-1000 runs off PostgreSQL).

    Args:
        conn: a connection in a transaction.
        backend: its backend (PostgreSQL takes the ids as one array).
        run_ids: the runs; every one of them gets an entry, empty when it has no data.
    """
    latest: dict[str, dict[str, Metric]] = {r: {} for r in run_ids}
    values: dict[str, dict[str, float]] = {r: {} for r in run_ids}
    param_map: dict[str, dict[str, str]] = {r: {} for r in run_ids}
    tag_map: dict[str, dict[str, str]] = {r: {} for r in run_ids}
    query = _DATA_QUERIES[backend]
    size = len(run_ids) if backend is Backend.POSTGRESQL else _IN_CHUNK[backend]
    decode = t.decode_metric
    for chunk in d.chunks(list(run_ids), max(size, 1)):
        rows = (await conn.execute(query, {"run_ids": list(chunk)})).all()
        for kind, run_id, key, num, timestamp, step, is_nan, text in rows:
            if kind == _KIND_METRIC:
                value = decode(num, bool(is_nan))
                latest[run_id][key] = Metric(key, value, timestamp or 0, step)
                values[run_id][key] = value
            elif kind == _KIND_PARAM:
                param_map[run_id][key] = text
            else:
                tag_map[run_id][key] = text
    return {
        r: RunData(metrics=values[r], params=param_map[r], tags=tag_map[r], latest_metrics=latest[r]) for r in run_ids
    }


def _numeric_value(clause: f.Clause) -> float | int:
    value = clause.value
    if not isinstance(value, (int, float)):  # pragma: no cover - the grammar guarantees it
        t.invalid(f"{clause.entity} {clause.key!r} needs a number")
    if clause.entity == "metric":
        return t.encode_metric(value, clause.key)[0]
    if isinstance(value, float):
        return value
    if not -(2**63) <= value < 2**63:
        t.invalid(f"{clause.key} value {value} does not fit in a 64-bit integer")
    return value


def clause_condition(backend: Backend, clause: f.Clause) -> ColumnElement[bool]:
    """The SQL condition of one parsed run-search clause (bound parameters only)."""
    if clause.entity == "metric":
        lm = latest_metrics.c
        value = _numeric_value(clause)
        if clause.comparator == f.NE:  # NaN differs from every number
            test: ColumnElement[bool] = or_(lm.is_nan == True, lm.value != value)
        else:
            test = and_(lm.is_nan == False, compare(backend, lm.value, clause.comparator, value))
        return exists().where(lm.run_uuid == runs.c.run_uuid, lm.key == clause.key, test)
    if clause.entity in ("param", "tag"):
        table = params if clause.entity == "param" else tags
        keyed = and_(table.c.run_uuid == runs.c.run_uuid, table.c.key == clause.key)
        if clause.comparator == f.IS_NULL:
            return ~exists().where(keyed)
        if clause.comparator == f.IS_NOT_NULL:
            return exists().where(keyed)
        return exists().where(keyed, clause_comparison(backend, table.c.value, clause))
    if clause.entity == "attribute":
        column = runs.c[ATTRIBUTE_COLUMNS[clause.key]]
        if clause.key in _STRING_ATTRIBUTES:
            return clause_comparison(backend, column, clause)
        return compare(backend, column, clause.comparator, _numeric_value(clause))
    t.invalid(f"unknown entity {clause.entity!r}")  # pragma: no cover - the grammar guarantees it


def search_query(
    backend: Backend,
    experiment_ids: Sequence[int],
    view: ViewType,
    clauses: Sequence[f.Clause],
    orders: Sequence[f.OrderBy],
) -> Select[Any]:
    """The search statement: runs rows, filtered and ordered, without LIMIT/OFFSET."""
    conditions: list[ColumnElement[bool]] = [runs.c.experiment_id.in_(list(experiment_ids))]
    lifecycle = view_condition(view, runs.c.lifecycle_stage)
    if lifecycle is not None:
        conditions.append(lifecycle)
    conditions += [clause_condition(backend, c) for c in clauses]
    source: FromClause = runs
    order_cols: list[Any] = []
    seen: set[str] = set()
    for i, order in enumerate(orders):
        direction = asc if order.ascending else desc
        if order.entity == "metric":
            lm = latest_metrics.alias(f"order_lm_{i}")
            source = source.outerjoin(lm, and_(lm.c.run_uuid == runs.c.run_uuid, lm.c.key == order.key))
            rank = case((lm.c.is_nan == True, 1), (lm.c.value.is_(None), 2), else_=0)
            order_cols += [rank, direction(lm.c.value)]
        elif order.entity in ("param", "tag"):
            table = (params if order.entity == "param" else tags).alias(f"order_{order.entity}_{i}")
            source = source.outerjoin(table, and_(table.c.run_uuid == runs.c.run_uuid, table.c.key == order.key))
            order_cols += [case((table.c.value.is_(None), 1), else_=0), direction(d.sortable(backend, table.c.value))]
        else:
            column: Any = runs.c[ATTRIBUTE_COLUMNS[order.key]]
            if order.key in _STRING_ATTRIBUTES:
                column = d.sortable(backend, column)
            order_cols += [case((runs.c[ATTRIBUTE_COLUMNS[order.key]].is_(None), 1), else_=0), direction(column)]
            seen.add(order.key)
    if "start_time" not in seen:
        order_cols.append(runs.c.start_time.desc())
    if "run_id" not in seen:
        order_cols.append(d.sortable(backend, runs.c.run_uuid).asc())
    return select(runs).select_from(source).where(*conditions).order_by(*order_cols)


__all__ = ["ATTRIBUTE_COLUMNS", "clause_condition", "load_run_data", "run_info", "search_query"]
