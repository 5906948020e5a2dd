"""Trace search: MLflow 3.17's trace filter grammar, turned into bound SQL, keyset pages.

The parser is :mod:`asyncstore.filters` with :data:`TRACE_GRAMMAR`; a clause means
what it means to MLflow's ``SqlAlchemyStore.search_traces``:

* trace attributes (bare, or after ``attributes.`` / ``attribute.`` / ``trace.``):
  ``timestamp_ms``, ``execution_time_ms``, ``end_time_ms`` (the timestamp plus the
  duration; each also without ``_ms``) with = != > >= < <=; ``status``,
  ``request_id`` and ``client_request_id`` with = != LIKE ILIKE RLIKE IN NOT IN;
* keys MLflow reads as another one, whatever prefix they are written with (but
  ``span.``), case-insensitively: ``name`` is the tag ``mlflow.traceName``,
  ``run_id`` the metadata ``mlflow.sourceRun``, ``prompt`` the tag
  ``mlflow.linkedPrompts`` and ``text`` the spans' ``content``; ``timestamp``,
  ``execution_time`` and ``end_time`` are the ``_ms`` keys;
* ``tags.<key>`` and ``metadata.<key>`` with = != LIKE ILIKE RLIKE IS NULL IS NOT NULL.
  The trace name and the session are ``trace_info`` columns; the token usage and
  cost take = != IS NULL IS NOT NULL (:mod:`asyncstore.tracing.analytics`);
  ``run_id = X`` (``metadata.mlflow.sourceRun = X``) also finds the traces linked to
  run X (``entity_associations``); ``prompt = 'name/version'`` (= only) finds the
  traces linked to that prompt version;
* ``span.name``, ``span.type``, ``span.status`` (= != LIKE ILIKE RLIKE IN NOT IN),
  ``span.content`` / ``text`` (LIKE ILIKE) and ``span.attributes.<name>``
  (= != LIKE ILIKE RLIKE), which MLflow matches against the span's JSON content:
  LIKE ``'%"<name>"<value>%'``, and RLIKE on the JSON-encoded string value. A trace
  matches when one of its spans matches every span clause; as in MLflow, with a
  ``timestamp_ms >`` / ``>=`` bound, spans that started more than 10 s before it are
  not looked at.

``feedback.``, ``expectation.`` and ``issue.`` (assessments) are refused: asyncstore
has no assessments table. Order by ``timestamp_ms``, ``execution_time_ms``,
``end_time_ms``, ``status``, ``request_id``, ``experiment_id``, ``name``, ``run_id``,
``tags.<key>``, ``metadata.<key>``, each ASC or DESC, NULLs last; then, as MLflow,
``timestamp_ms DESC`` and ``request_id ASC`` unless given. Paging is a keyset on the
order keys and the trace id: stable under concurrent inserts, unlike OFFSET.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, asc, case, desc, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import filters as f
from asyncstore.conditions import clause_comparison, compare
from asyncstore.config import Backend
from asyncstore.dialect import sortable
from asyncstore.entities import Page, TraceInfo
from asyncstore.errors import InvalidParameter
from asyncstore.paging import decode_token, encode_token, fingerprint
from asyncstore.rules import experiment_id_of
from asyncstore.schema import entity_associations, spans, trace_info, trace_request_metadata, trace_tags
from asyncstore.tracing import analytics, links
from asyncstore.uow import UnitOfWork

MAX_RESULTS = 1000
"""Largest page of trace search."""

LINKED_PROMPTS = "mlflow.linkedPrompts"
SOURCE_RUN = "mlflow.sourceRun"
PROMPT_VERSION = "prompt_version"
"""``entity_associations.destination_type`` of a prompt version linked to a trace."""
SPAN_TIME_TOLERANCE_MS = 10_000
"""MLflow's slack between a trace's timestamp bound and its spans' start times."""

_STRINGS = frozenset({f.EQ, f.NE, f.LIKE, f.ILIKE, f.RLIKE})
_STRING_SETS = _STRINGS | {f.IN, f.NOT_IN}
_KEY_VALUES = _STRINGS | {f.IS_NULL, f.IS_NOT_NULL}

_SORTED_STRING = f.KeySpec(f.ValueType.STRING, _STRING_SETS)
_TAG = f.KeySpec(f.ValueType.STRING, _KEY_VALUES)
_FILTER_ONLY = f.KeySpec(f.ValueType.STRING, _KEY_VALUES, orderable=False)
_SPAN_COLUMN = f.KeySpec(f.ValueType.STRING, _STRING_SETS, orderable=False)

TRACE_GRAMMAR = f.Grammar(
    entities=(
        f.EntitySpec(
            "attribute",
            ("attributes", "attribute", "trace", "attr"),
            keys={
                "timestamp_ms": f.NUMBER_KEY,
                "execution_time_ms": f.NUMBER_KEY,
                "end_time_ms": f.NUMBER_KEY,
                "status": _SORTED_STRING,
                "request_id": _SORTED_STRING,
                "client_request_id": f.KeySpec(f.ValueType.STRING, _STRING_SETS, orderable=False),
                "experiment_id": f.KeySpec(f.ValueType.NUMBER, frozenset()),  # order only
                # Stand for other keys (redirects below): filter and order / filter only.
                "name": _TAG,
                "run_id": _TAG,
                "prompt": _FILTER_ONLY,
                "text": _FILTER_ONLY,
            },
            key_aliases={
                "timestamp": "timestamp_ms", "execution_time": "execution_time_ms", "end_time": "end_time_ms",
                "state": "status", "trace_id": "request_id",
            },
        ),
        f.EntitySpec(
            "tag", ("tags", "tag"), default=_TAG,
            keys={LINKED_PROMPTS: f.KeySpec(f.ValueType.STRING, frozenset({f.EQ}))},
        ),
        f.EntitySpec(
            "metadata", ("metadata", "request_metadata"), default=_TAG,
            keys={
                key: f.KeySpec(f.ValueType.STRING, frozenset({f.EQ, f.NE, f.IS_NULL, f.IS_NOT_NULL}), orderable=False)
                for key in (analytics.TOKEN_USAGE, analytics.COST)
            },
        ),
        f.EntitySpec(
            "span", ("span", "spans"),
            keys={
                "name": _SPAN_COLUMN, "type": _SPAN_COLUMN, "status": _SPAN_COLUMN,
                "content": f.KeySpec(f.ValueType.STRING, frozenset({f.LIKE, f.ILIKE}), orderable=False),
            },
            key_prefixes={"attributes.": f.KeySpec(f.ValueType.STRING, _STRINGS, orderable=False)},
        ),
        f.EntitySpec(
            "assessment", ("feedback", "expectation", "issue"),
            unsupported="feedback., expectation. and issue. search assessments, which asyncstore does not "
            "store: they are not supported",
        ),
    ),
    default_entity="attribute",
    redirects={
        "name": ("tag", analytics.TRACE_NAME),
        "prompt": ("tag", LINKED_PROMPTS),
        "run_id": ("metadata", SOURCE_RUN),
        "text": ("span", "content"),
        "timestamp": (None, "timestamp_ms"),
        "execution_time": (None, "execution_time_ms"),
        "end_time": (None, "end_time_ms"),
    },
    redirect_from=frozenset({"attribute", "tag", "metadata"}),
)
"""Keys, comparators and prefixes trace search accepts (MLflow's, plus the prefixes
``attr.`` and ``spans.`` and the keys ``state`` and ``trace_id``)."""

_ATTRIBUTE_COLUMNS: dict[str, Any] = {
    "timestamp_ms": trace_info.c.timestamp_ms,
    "execution_time_ms": trace_info.c.execution_time_ms,
    "end_time_ms": trace_info.c.timestamp_ms + func.coalesce(trace_info.c.execution_time_ms, 0),
    "status": trace_info.c.status,
    "request_id": trace_info.c.request_id,
    "client_request_id": trace_info.c.client_request_id,
    "experiment_id": trace_info.c.experiment_id,
}
_NUMERIC_ATTRIBUTES = frozenset({"timestamp_ms", "execution_time_ms", "end_time_ms", "experiment_id"})
_SPAN_COLUMNS = {"name": spans.c.name, "type": spans.c.type, "status": spans.c.status, "content": spans.c.content}
_INT64 = 2**63


def _number(clause: f.Clause) -> int | float:
    value = clause.value
    if isinstance(value, int) and not -_INT64 <= value < _INT64:
        raise InvalidParameter(f"{clause.key} value {value} does not fit in a 64-bit integer")
    assert isinstance(value, (int, float))
    return value


def _key_value(backend: Backend, table: Any, clause: f.Clause) -> ColumnElement[bool]:
    """A ``trace_tags`` / ``trace_request_metadata`` row of the key, and its value."""
    keyed = and_(table.c.request_id == trace_info.c.request_id, compare(backend, table.c.key, f.EQ, clause.key))
    if clause.comparator == f.IS_NULL:
        return ~exists().where(keyed)
    if clause.comparator == f.IS_NOT_NULL:
        return exists().where(keyed)
    return exists().where(keyed, clause_comparison(backend, table.c.value, clause))


def _column(backend: Backend, column: Any, clause: f.Clause) -> ColumnElement[bool]:
    if clause.comparator == f.IS_NULL:
        return column.is_(None)  # type: ignore[no-any-return]
    if clause.comparator == f.IS_NOT_NULL:
        return column.isnot(None)  # type: ignore[no-any-return]
    return clause_comparison(backend, column, clause)


def _linked(destination_type: str, destination_id: str) -> ColumnElement[bool]:
    """The trace has an ``entity_associations`` link to this destination."""
    a = entity_associations.c
    return exists().where(
        a.source_type == links.TRACE, a.source_id == trace_info.c.request_id,
        a.destination_type == destination_type, a.destination_id == destination_id,
    )


def _json_metadata(clause: f.Clause) -> ColumnElement[bool]:
    """The token usage or the cost: present (one of its columns is set) or not, or
    compared with the JSON read back."""
    if clause.comparator in (f.IS_NULL, f.IS_NOT_NULL):
        present = or_(*(trace_info.c[name].isnot(None) for name in analytics._JSON_COLUMNS[clause.key]))
        return present if clause.comparator == f.IS_NOT_NULL else ~present
    return analytics.json_condition(clause)


def _trace_condition(backend: Backend, clause: f.Clause) -> ColumnElement[bool]:
    """One clause that is not about spans, as a condition on ``trace_info``."""
    if clause.entity == "attribute":
        column = _ATTRIBUTE_COLUMNS[clause.key]
        if clause.key in _NUMERIC_ATTRIBUTES:
            return compare(backend, column, clause.comparator, _number(clause))
        return clause_comparison(backend, column, clause)
    if clause.entity == "tag":
        if clause.key == analytics.TRACE_NAME:
            return _column(backend, trace_info.c.trace_name, clause)
        if clause.key == LINKED_PROMPTS:
            if str(clause.value).count("/") != 1:
                raise InvalidParameter(f"prompt {clause.value!r} is not valid: expected prompt = 'name/version'")
            return _linked(PROMPT_VERSION, str(clause.value))
        return _key_value(backend, trace_tags, clause)
    assert clause.entity == "metadata", clause
    if clause.key == analytics.SESSION:
        return _column(backend, trace_info.c.session_id, clause)
    if analytics.is_json_key("metadata", clause.key):
        return _json_metadata(clause)
    if clause.key == SOURCE_RUN and clause.comparator == f.EQ:
        # The run's traces: linked to it, or logged in it.
        return or_(_linked(links.RUN, str(clause.value)), _key_value(backend, trace_request_metadata, clause))
    return _key_value(backend, trace_request_metadata, clause)


def _span_attribute_pattern(name: str, clause: f.Clause) -> str:
    """What MLflow compares a span's JSON content with for ``span.attributes.<name>``.

    Attribute values are JSON-encoded in the content (``"model": "\\"gpt-4o\\""``):
    RLIKE looks for the pattern inside a string value, its ``^`` / ``$`` anchored at
    the value's quotes; the other comparators take ``%"<name>"<value>%`` (so only a
    value starting with ``%`` can match with LIKE, and ``=`` matches nothing).
    """
    value = str(clause.value)
    if clause.comparator != f.RLIKE:
        return f'%"{name}"{value}%'
    prefix = '"\\\\"' if value.startswith("^") else '"\\\\".*'
    suffix = '\\\\"' if value.endswith("$") else ""
    value = value[1:] if value.startswith("^") else value
    value = value[:-1] if value.endswith("$") else value
    return f'"{name}": {prefix}{value}{suffix}'


def _span_condition(backend: Backend, clauses: Sequence[f.Clause], lower_bound_ms: float | None) -> ColumnElement[bool]:
    """One span of the trace matches every span clause."""
    # By trace id alone, so the spans' primary key (trace_id, span_id) serves the
    # lookup: also requiring the trace's experiment let SQLite scan every span of the
    # experiment for each trace instead (a span's experiment is its trace's anyway).
    conditions: list[ColumnElement[bool]] = [spans.c.trace_id == trace_info.c.request_id]
    if lower_bound_ms is not None and math.isfinite(lower_bound_ms):
        start_ns = math.ceil((lower_bound_ms - SPAN_TIME_TOLERANCE_MS) * 1_000_000)
        conditions.append(spans.c.start_time_unix_nano >= max(-_INT64, min(start_ns, _INT64 - 1)))
    for clause in clauses:
        if clause.key.startswith("attributes."):
            pattern = _span_attribute_pattern(clause.key[len("attributes."):], clause)
            conditions.append(compare(backend, spans.c.content, clause.comparator, pattern))
        else:
            conditions.append(clause_comparison(backend, _SPAN_COLUMNS[clause.key], clause))
    return exists().where(*conditions)


def filter_conditions(backend: Backend, clauses: Sequence[f.Clause]) -> list[ColumnElement[bool]]:
    """The parsed clauses as SQL conditions on ``trace_info`` (values are bound)."""
    conditions = [_trace_condition(backend, c) for c in clauses if c.entity != "span"]
    span_clauses = [c for c in clauses if c.entity == "span"]
    if span_clauses:
        bounds = [
            _number(c) for c in clauses
            if c.entity == "attribute" and c.key == "timestamp_ms" and c.comparator in (f.GT, f.GE)
        ]
        conditions.append(_span_condition(backend, span_clauses, max(bounds) if bounds else None))
    return conditions


@dataclasses.dataclass(frozen=True)
class _SortKey:
    """One ORDER BY expression (never NULL) and the Python type of its values."""

    expression: Any
    ascending: bool
    kind: type


def _sort_keys(backend: Backend, orders: Sequence[f.OrderBy]) -> list[_SortKey]:
    """The ORDER BY of the orders, NULLs last, then MLflow's tie-breakers.

    A value that can be NULL sorts by (is it NULL, the value or a placeholder), so
    that the keyset compares no NULL.
    """
    keys: list[_SortKey] = []
    seen: set[tuple[str, str]] = set()
    for order in orders:
        if (order.entity, order.key) in seen:
            raise InvalidParameter(f"order_by names {order.entity} {order.key!r} twice")
        seen.add((order.entity, order.key))
        nullable = True
        kind: type = str
        value: Any = None
        if order.entity == "attribute":
            value = _ATTRIBUTE_COLUMNS[order.key]
            kind = int if order.key in _NUMERIC_ATTRIBUTES else str
            nullable = order.key == "execution_time_ms"
        elif order.entity == "tag" and order.key == analytics.TRACE_NAME:
            value = trace_info.c.trace_name
        elif order.entity == "metadata" and order.key == analytics.SESSION:
            value = trace_info.c.session_id
        else:
            table = trace_tags if order.entity == "tag" else trace_request_metadata
            value = (
                select(table.c.value)
                .where(table.c.request_id == trace_info.c.request_id, compare(backend, table.c.key, f.EQ, order.key))
                .scalar_subquery()
            )
        if nullable:
            keys.append(_SortKey(case((value.is_(None), 1), else_=0), True, int))
            value = func.coalesce(value, "" if kind is str else 0)
        keys.append(_SortKey(sortable(backend, value) if kind is str else value, order.ascending, kind))
    if ("attribute", "timestamp_ms") not in seen:
        keys.append(_SortKey(trace_info.c.timestamp_ms, False, int))
    if ("attribute", "request_id") not in seen:
        keys.append(_SortKey(sortable(backend, trace_info.c.request_id), True, str))
    return keys


def _after(keys: Sequence[_SortKey], position: Sequence[Any]) -> ColumnElement[bool]:
    """Rows that sort after ``position`` (the values of ``keys`` of the last row)."""
    condition: ColumnElement[bool] | None = None
    for key, value in reversed(list(zip(keys, position))):
        beyond = key.expression > value if key.ascending else key.expression < value
        condition = beyond if condition is None else or_(beyond, and_(key.expression == value, condition))
    assert condition is not None
    return condition


def _position(token: str, query_id: str, keys: Sequence[_SortKey]) -> list[Any]:
    position = decode_token(token, query_id).get("k")
    if (
        not isinstance(position, list)
        or len(position) != len(keys)
        or not all(type(v) is k.kind for v, k in zip(position, keys))
    ):
        raise InvalidParameter("page_token is damaged; pass the next_page_token of a previous page unchanged")
    return position


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
    backend = uow.backend
    clauses = f.parse_filter(filter_string, TRACE_GRAMMAR)
    orders = f.parse_order_by(list(order_by) if order_by else ["timestamp_ms DESC"], TRACE_GRAMMAR)
    conditions = [trace_info.c.experiment_id.in_(exps), *filter_conditions(backend, clauses)]
    keys = _sort_keys(backend, orders)
    query_id = fingerprint(
        "traces", exps, filter_string or "", [(o.entity, o.key, o.ascending) for o in orders]
    )
    if page_token is not None:
        conditions.append(_after(keys, _position(page_token, query_id, keys)))
    stmt = (
        select(trace_info.c.request_id, *(k.expression for k in keys))
        .where(*conditions)
        .order_by(*((asc if k.ascending else desc)(k.expression) for k in keys))
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
        token = encode_token({"k": [k.kind(v) for k, v in zip(keys, last[1:])]}, query_id)
    return Page([infos[r[0]] for r in rows[:max_results] if r[0] in infos], token)


__all__ = ["MAX_RESULTS", "TRACE_GRAMMAR", "filter_conditions", "search_traces"]
