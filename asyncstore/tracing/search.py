"""Trace search: MLflow's filter grammar for traces, turned into bound SQL, keyset pages.

The parser is :mod:`asyncstore.filters` with :data:`TRACE_GRAMMAR`: trace attributes
(``timestamp_ms``, ``execution_time_ms``, ``state``/``status``,
``client_request_id``, ``trace_id``), ``tags.<key>``, ``metadata.<key>`` and
``span.name`` / ``span.type`` / ``span.status`` (a trace matches when one of its
spans does). The trace name, session, token usage and cost are compared in their
``trace_info`` columns (:mod:`asyncstore.tracing.analytics`). Paging is a keyset on (order key, request_id): stable under concurrent
inserts, unlike OFFSET.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, asc, desc, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import filters as f
from asyncstore.conditions import clause_comparison
from asyncstore.config import Backend
from asyncstore.entities import Page, TraceInfo
from asyncstore.errors import InvalidParameter
from asyncstore.paging import decode_token, encode_token, fingerprint
from asyncstore.rules import experiment_id_of
from asyncstore.schema import spans, trace_info, trace_request_metadata, trace_tags
from asyncstore.tracing import analytics
from asyncstore.uow import UnitOfWork

MAX_RESULTS = 1000
"""Largest page of trace search."""

_EQ_ONLY = f.KeySpec(f.ValueType.STRING, frozenset({f.EQ, f.NE}), orderable=False)
_STRING = f.KeySpec(f.ValueType.STRING, f.STRING_COMPARATORS, orderable=False)
_FREE_STRING = f.KeySpec(f.ValueType.STRING, f.STRING_COMPARATORS, orderable=False)

TRACE_GRAMMAR = f.Grammar(
    entities=(
        f.EntitySpec(
            "attribute",
            ("attributes", "attribute", "attr", "trace"),
            keys={
                "timestamp_ms": f.NUMBER_KEY,
                "execution_time_ms": f.NUMBER_KEY,
                "state": _EQ_ONLY,
                "client_request_id": _STRING,
                "trace_id": _STRING,
            },
            key_aliases={
                "status": "state", "timestamp": "timestamp_ms", "execution_time": "execution_time_ms",
                "request_id": "trace_id",
            },
        ),
        f.EntitySpec("tag", ("tags", "tag"), default=_FREE_STRING),
        f.EntitySpec("metadata", ("metadata", "request_metadata"), default=_FREE_STRING),
        f.EntitySpec("span", ("span", "spans"), keys={"name": _STRING, "type": _STRING, "status": _EQ_ONLY}),
    ),
    default_entity="attribute",
)
"""Keys, comparators and prefixes trace search accepts."""

_ATTRIBUTE_COLUMNS = {
    "timestamp_ms": trace_info.c.timestamp_ms,
    "execution_time_ms": trace_info.c.execution_time_ms,
    "state": trace_info.c.status,
    "client_request_id": trace_info.c.client_request_id,
    "trace_id": trace_info.c.request_id,
}
_SPAN_COLUMNS = {"name": spans.c.name, "type": spans.c.type, "status": spans.c.status}


def clause_sql(backend: Backend, clause: f.Clause) -> ColumnElement[bool]:
    """One parsed clause as a SQL condition on ``trace_info`` (values are bound)."""
    if clause.entity == "attribute":
        return clause_comparison(backend, _ATTRIBUTE_COLUMNS[clause.key], clause)
    if clause.entity in ("tag", "metadata"):
        column = analytics.search_column(clause.entity, clause.key)
        if column is not None:
            return clause_comparison(backend, column, clause)
        if analytics.is_json_key(clause.entity, clause.key):
            return analytics.json_condition(clause)
        table = trace_tags if clause.entity == "tag" else trace_request_metadata
        return exists().where(
            table.c.request_id == trace_info.c.request_id,
            table.c.key == clause.key,
            clause_comparison(backend, table.c.value, clause),
        )
    if clause.entity == "span":
        return exists().where(
            spans.c.trace_id == trace_info.c.request_id,
            clause_comparison(backend, _SPAN_COLUMNS[clause.key], clause),
        )
    raise InvalidParameter(f"unknown entity {clause.entity!r} in trace search")  # pragma: no cover


async def search_traces(
    uow: UnitOfWork,
    experiment_ids: Sequence[int | str],
    filter_string: str,
    order_by: Sequence[str],
    max_results: int,
    page_token: str | None,
    load_infos: Callable[[AsyncConnection, Sequence[str]], Awaitable[dict[str, TraceInfo]]],
) -> Page[TraceInfo]:
    """Run a trace search (see :meth:`TraceRepository.search`)."""
    if isinstance(experiment_ids, (str, int)) or not experiment_ids:
        raise InvalidParameter("experiment_ids must be a non-empty list of experiment ids")
    exps = sorted({experiment_id_of(e) for e in experiment_ids})
    if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= MAX_RESULTS:
        raise InvalidParameter(f"max_results {max_results!r} is not valid: expected a whole number from 1 to {MAX_RESULTS}")
    clauses = f.parse_filter(filter_string, TRACE_GRAMMAR)
    orders = f.parse_order_by(list(order_by) if order_by else ["timestamp_ms DESC"], TRACE_GRAMMAR)
    if len(orders) != 1 or orders[0].entity != "attribute" or orders[0].key not in ("timestamp_ms", "execution_time_ms"):
        raise InvalidParameter(
            "order_by must be one item, timestamp_ms or execution_time_ms, with ASC or DESC "
            "(ties are broken by trace id)"
        )
    order = orders[0]
    backend = uow.backend
    # Unknown durations sort as -1 so the keyset never meets NULL.
    key: Any = trace_info.c.timestamp_ms if order.key == "timestamp_ms" else func.coalesce(trace_info.c.execution_time_ms, -1)
    conditions: list[ColumnElement[bool]] = [trace_info.c.experiment_id.in_(exps)]
    conditions += [clause_sql(backend, c) for c in clauses]
    query_id = fingerprint("traces", exps, filter_string or "", order.key, order.ascending)
    if page_token is not None:
        pos = decode_token(page_token, query_id)
        try:
            k, rid = int(pos["k"]), str(pos["i"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidParameter("invalid page_token: pass the next_page_token unchanged") from exc
        rid_col = trace_info.c.request_id
        if order.ascending:
            conditions.append(or_(key > k, and_(key == k, rid_col > rid)))
        else:
            conditions.append(or_(key < k, and_(key == k, rid_col < rid)))
    direction = asc if order.ascending else desc
    stmt = (
        select(trace_info.c.request_id, key)
        .where(*conditions)
        .order_by(direction(key), direction(trace_info.c.request_id))
        .limit(max_results + 1)
    )

    async def work(conn: AsyncConnection) -> tuple[list[Any], dict[str, TraceInfo]]:
        rows = list((await conn.execute(stmt)).all())[: max_results + 1]
        infos = await load_infos(conn, [r[0] for r in rows[:max_results]])
        return rows, infos

    rows, infos = await uow.run(work, write=False)
    token = None
    if len(rows) > max_results:
        last = rows[max_results - 1]
        token = encode_token({"k": int(last[1]), "i": last[0]}, query_id)
    return Page([infos[r[0]] for r in rows[:max_results] if r[0] in infos], token)
