"""Spans to rows: validation, per-trace aggregates, span order.

Pure Python, no database: :mod:`asyncstore.tracing.ingest` writes what this
module prepares, with each span's ``content`` encoded by
:mod:`asyncstore.tracing.content` and the values MLflow derives from spans computed by
:mod:`asyncstore.tracing.derive`. Everything here runs once per span on the ingestion hot
path, so it avoids per-span allocations beyond the row tuple and the JSON string; only
the spans with an attribute MLflow derives something from (and root spans) go through
:class:`~asyncstore.tracing.derive.TraceFacts`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

from asyncstore.entities import Span, SpanEvent, SpanStatus, TraceState
from asyncstore.errors import InvalidParameter
from asyncstore.schema import SPAN_TYPE_MAX
from asyncstore.tracing import content, derive

TRACE_ID_RE = re.compile(r"tr-[0-9a-f]{32}")
SPAN_ID_RE = re.compile(r"[0-9a-f]{16}")
NS_MAX = 2**63 - 1
"""The largest span timestamp, in epoch nanoseconds (a BIGINT column)."""
_NS_PER_MS = 1_000_000
_STATUS_VALUES = {s.value: s for s in SpanStatus}
_STATUS_STR: dict[str, str] = {s.value: s.value for s in SpanStatus}
"""Status (enum member or its string: equal and same hash) -> plain string."""


SpanRow = tuple[
    str, str, "str | None", str, "str | None", str, int, "int | None",
    "float | None", "float | None", "float | None", "str | None", "str | None", str,
]
"""trace_id, span_id, parent_span_id, name, type, status, start ns, end ns, input_cost,
output_cost, total_cost, model_name, model_provider, content."""
TraceRow = tuple[Any, ...]
"""request_id, experiment_id, timestamp_ms, execution_time_ms, status, trace_name,
session_id, request_preview, response_preview, then the six token counts and three costs
(:data:`asyncstore.tracing.derive.ANALYTICS_COLUMNS`)."""


@dataclasses.dataclass
class TraceAggregate:
    """What one batch says about one trace: its time range and its root's state."""

    start_ns: int
    end_ns: int
    root_state: TraceState | None = None
    trace_id_b64: str = ""
    """The trace id as MLflow's span content holds it."""
    request_id_attr: str = ""
    """The trace's encoded ``mlflow.traceRequestId`` attribute, shared by its spans."""
    facts: derive.TraceFacts = dataclasses.field(default_factory=derive.TraceFacts)
    """What its spans say that MLflow derives trace values from."""

    def row(self, trace_id: str, experiment_id: int, derived: derive.TraceDerived) -> TraceRow:
        """The trace_info row for this trace (:data:`TraceRow`)."""
        start_ms = self.start_ns // _NS_PER_MS
        end_ms = self.end_ns // _NS_PER_MS
        state = self.root_state or TraceState.IN_PROGRESS
        return (
            trace_id, experiment_id, start_ms, end_ms - start_ms, state.value, derived.trace_name,
            derived.session_id, derived.request_preview, derived.response_preview, *derived.analytics(),
        )


@dataclasses.dataclass
class PreparedBatch:
    """A validated batch: span rows sorted by (trace_id, span_id), trace rows by id, and
    what the batch derives for each trace (tags, user, the spans' usage and cost trees)."""

    span_rows: list[SpanRow]
    trace_rows: list[TraceRow]
    derived: dict[str, derive.TraceDerived] = dataclasses.field(default_factory=dict)
    derives_span_columns: bool = False
    """Whether a span row has an attribute its costs, model or provider come from (else
    those columns are NULL in every row)."""

    @property
    def trace_ids(self) -> list[str]:
        """The ids of the traces the batch touches, sorted."""
        return [row[0] for row in self.trace_rows]


def _bad(index: int, span: Any, problem: str) -> InvalidParameter:
    trace_id = getattr(span, "trace_id", None)
    span_id = getattr(span, "span_id", None)
    return InvalidParameter(
        f"span #{index} (trace_id={trace_id!r}, span_id={span_id!r}): {problem}; "
        "nothing in the batch was written"
    )


def _is_ns(value: Any) -> bool:
    return type(value) is int and 0 <= value <= NS_MAX


def _check(index: int, span: Any) -> None:
    """Raise InvalidParameter naming the span if anything about it is wrong."""
    if not isinstance(span, Span):
        raise _bad(index, span, f"expected an asyncstore.entities.Span, got {type(span).__name__}")
    if not isinstance(span.trace_id, str) or TRACE_ID_RE.fullmatch(span.trace_id) is None:
        raise _bad(index, span, "trace_id must be 'tr-' followed by 32 lowercase hex characters")
    if not isinstance(span.span_id, str) or SPAN_ID_RE.fullmatch(span.span_id) is None:
        raise _bad(index, span, "span_id must be 16 lowercase hex characters")
    parent = span.parent_span_id
    if parent is not None and (not isinstance(parent, str) or SPAN_ID_RE.fullmatch(parent) is None):
        raise _bad(index, span, "parent_span_id must be None or 16 lowercase hex characters")
    if parent == span.span_id:
        raise _bad(index, span, "a span cannot be its own parent")
    if not isinstance(span.name, str):
        raise _bad(index, span, "name must be a string")
    if span.span_type is not None and (not isinstance(span.span_type, str) or len(span.span_type) > SPAN_TYPE_MAX):
        raise _bad(index, span, f"span_type must be None or a string of at most {SPAN_TYPE_MAX} characters")
    if not isinstance(span.status, SpanStatus):
        if span.status not in _STATUS_VALUES:
            raise _bad(index, span, f"status must be one of {', '.join(_STATUS_VALUES)}")
    if not _is_ns(span.start_time_unix_nano):
        raise _bad(index, span, "start_time_unix_nano must be a whole number of epoch nanoseconds >= 0")
    end = span.end_time_unix_nano
    if end is not None:
        if not _is_ns(end):
            raise _bad(index, span, "end_time_unix_nano must be None or a whole number of epoch nanoseconds")
        if end < span.start_time_unix_nano:
            raise _bad(index, span, "end_time_unix_nano is before start_time_unix_nano")
    if not isinstance(span.status_message, str) or not isinstance(span.kind, str):
        raise _bad(index, span, "status_message and kind must be strings")
    if not isinstance(span.attributes, dict) or not isinstance(span.resource, dict):
        raise _bad(index, span, "attributes and resource must be dicts")
    for event in span.events:
        if not isinstance(event, SpanEvent) or not _is_ns(event.timestamp_unix_nano):
            raise _bad(index, span, "events must be SpanEvent objects with epoch-nanosecond timestamps")


def prepare(spans: Iterable[Span], experiment_id: int) -> PreparedBatch:
    """Validate a batch and build its rows; raise before anything is written.

    Re-sent spans (same trace_id and span_id) inside one batch collapse to the
    last one, as they would across batches.

    Raises:
        InvalidParameter: a span is malformed, or carries a value MLflow refuses (a
            session id or trace name too long); the message names it.
    """
    by_key: dict[tuple[str, str], SpanRow] = {}
    traces: dict[str, TraceAggregate] = {}
    type_attrs: dict[str, str] = {}  # span type -> its encoded attribute
    trace_match, span_match, statuses = TRACE_ID_RE.fullmatch, SPAN_ID_RE.fullmatch, _STATUS_STR
    span_keys = derive.SPAN_KEYS
    derives_span_columns = False
    for index, span in enumerate(spans):
        # The common case in one expression; anything unusual goes through _check,
        # which raises with a precise message (or accepts, e.g. a str subclass).
        if type(span) is not Span:
            _check(index, span)
        trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
        start, end, span_type = span.start_time_unix_nano, span.end_time_unix_nano, span.span_type
        status = statuses.get(span.status) if isinstance(span.status, str) else None
        if not (
            type(trace_id) is str and trace_match(trace_id)
            and type(span_id) is str and span_match(span_id)
            and (parent is None or (type(parent) is str and parent != span_id and span_match(parent)))
            and type(span.name) is str
            and (span_type is None or (type(span_type) is str and len(span_type) <= SPAN_TYPE_MAX))
            and status is not None
            and type(start) is int and 0 <= start <= NS_MAX
            and (end is None or (type(end) is int and start <= end <= NS_MAX))
            and type(span.status_message) is str and type(span.kind) is str
            and type(span.attributes) is dict and type(span.resource) is dict
            and all(type(e) is SpanEvent and _is_ns(e.timestamp_unix_nano) for e in span.events)
        ):
            _check(index, span)
            status = _STATUS_STR[span.status]
        agg = traces.get(trace_id)
        if agg is None:
            agg = traces[trace_id] = TraceAggregate(start, start if end is None else end)
            agg.trace_id_b64 = content.b64_id(trace_id[3:])
            agg.request_id_attr = content.member(content.REQUEST_ID_KEY, trace_id)
        type_attr = None
        if span_type is not None:
            type_attr = type_attrs.get(span_type)
            if type_attr is None:
                type_attr = type_attrs[span_type] = content.member(content.SPAN_TYPE_KEY, span_type)
        try:
            text = content.encode(span, status, agg.trace_id_b64, agg.request_id_attr, type_attr)
        except (TypeError, ValueError) as exc:
            raise _bad(index, span, f"content is not JSON-serialisable ({exc})") from exc
        columns = derive.NO_SPAN_COLUMNS
        if parent is None or span.resource or not span_keys.isdisjoint(span.attributes):
            try:
                columns = agg.facts.add(span_id, parent, span.attributes, span.resource)
            except derive.Refused as exc:
                raise _bad(index, span, str(exc)) from exc
            derives_span_columns = derives_span_columns or columns is not derive.NO_SPAN_COLUMNS
        elif agg.facts.carried:  # the span may be sent again, without what it carried
            agg.facts.forget(span_id)
        by_key[(trace_id, span_id)] = (trace_id, span_id, parent, span.name, span_type, status, start, end, *columns, text)
        last = start if end is None else end
        if start < agg.start_ns:
            agg.start_ns = start
        if last > agg.end_ns:
            agg.end_ns = last
        if parent is None:
            agg.root_state = root_state(SpanStatus(status), end)
    span_rows = [by_key[key] for key in sorted(by_key)]
    # The span trees (in batch order) of the traces whose spans carry a token usage or a cost.
    trees: dict[str, list[tuple[str, str | None]]] = {tid: [] for tid, agg in traces.items() if agg.facts.carried}
    if trees:
        for (tid, sid), row in by_key.items():
            if tid in trees:
                trees[tid].append((sid, row[2]))
    derived = {tid: agg.facts.finish(trees.get(tid, ())) for tid, agg in traces.items()}
    trace_rows = [traces[tid].row(tid, experiment_id, derived[tid]) for tid in sorted(traces)]
    return PreparedBatch(span_rows, trace_rows, derived, derives_span_columns)


def root_state(status: SpanStatus, end_ns: int | None) -> TraceState:
    """The trace state a root span implies: IN_PROGRESS while open, ERROR or OK once ended."""
    if end_ns is None:
        return TraceState.IN_PROGRESS
    return TraceState.ERROR if status is SpanStatus.ERROR else TraceState.OK


def parent_first(spans: Sequence[Span]) -> list[Span]:
    """Order spans so every parent comes before its children (siblings by start time).

    Spans whose parent is not among them are treated as roots.
    """
    ordered = sorted(spans, key=lambda s: (s.start_time_unix_nano, s.span_id))
    ids = {s.span_id for s in ordered}
    children: dict[str | None, list[Span]] = {}
    for span in ordered:
        parent = span.parent_span_id if span.parent_span_id in ids else None
        children.setdefault(parent, []).append(span)
    result: list[Span] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        span = stack.pop()
        result.append(span)
        stack.extend(reversed(children.get(span.span_id, [])))
    if len(result) < len(ordered):  # a parent cycle: keep the rest in start order
        seen = {s.span_id for s in result}
        result.extend(s for s in ordered if s.span_id not in seen)
    return result


def check_trace_id(trace_id: object) -> str:
    """Return ``trace_id`` if it is ``tr-`` + 32 lowercase hex characters.

    Raises:
        InvalidParameter: otherwise.
    """
    if not isinstance(trace_id, str) or TRACE_ID_RE.fullmatch(trace_id) is None:
        raise InvalidParameter(
            f"trace_id {trace_id!r} is not valid: expected 'tr-' followed by 32 lowercase hex characters"
        )
    return trace_id
