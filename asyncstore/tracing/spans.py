"""The spans repository: bulk ingestion and span queries.

``log_spans`` is the ingestion hot path (see :mod:`asyncstore.tracing.ingest`
for the statements); ``get_spans`` and ``search_spans`` read spans back as
:class:`~asyncstore.entities.Span` objects rebuilt from their ``content`` JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore.entities import Page, Span, SpanStatus
from asyncstore.errors import ErrorCode, InvalidParameter, NotFound
from asyncstore.paging import decode_token, encode_token, fingerprint
from asyncstore.rules import experiment_id_of
from asyncstore.schema import spans as spans_table
from asyncstore.schema import trace_info
from asyncstore.tracing.ingest import write_batch
from asyncstore.tracing import content
from asyncstore.tracing.rows import check_trace_id, parent_first, prepare
from asyncstore.uow import UnitOfWork

MAX_SEARCH_RESULTS = 1000
"""Largest page search_spans returns (each span carries its full content)."""

SpanOrder = Literal["start", "duration"]


class SpanRepository:
    """Async repository for spans: ``store.spans``.

    Example::

        await store.spans.log_spans(experiment_id, spans)
        page = await store.spans.search_spans(experiment_id, status="ERROR")
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    async def log_spans(self, experiment_id: int | str, spans: Iterable[Span]) -> int:
        """Store a batch of spans from any number of traces, in one transaction.

        Each trace of the batch gets a ``trace_info`` row if it has none
        (timestamp from its earliest span, execution time from the span range, state
        from its root span, IN_PROGRESS while the root is open); an existing trace has
        its time range widened and takes its state from the root span only while it is
        IN_PROGRESS. Re-sent spans (same trace_id and span_id) overwrite the stored row.

        What MLflow 3.17's ``log_spans`` derives from spans is derived too, by its rules
        (:mod:`asyncstore.tracing.derive`, :mod:`asyncstore.tracing.ingest`): each span
        row's costs, model and provider (attributes ``mlflow.llm.cost``,
        ``mlflow.llm.model``, ``mlflow.llm.provider``); the trace's name (root attribute
        ``mlflow.traceTag.mlflow.traceName``), session (``session.id`` or
        ``gen_ai.conversation.id``), request and response previews (the root's inputs
        and outputs), token counts and costs summed over its span tree
        (``mlflow.chat.tokenUsage``, ``mlflow.llm.cost``; kept when ``traces.start`` set
        them), tags (the root's other ``mlflow.traceTag.*`` attributes, the resource's
        attributes) and user (metadata ``mlflow.trace.user`` from ``user.id``). A value
        of the wrong shape derives nothing, as in MLflow.

        Args:
            experiment_id: the experiment the traces belong to.
            spans: the spans; any iterable, consumed once.

        Returns:
            The number of distinct spans written.

        Raises:
            InvalidParameter: a malformed span (named in the message), a value MLflow
                refuses too (a session id over 250 characters, a trace name over 4096), or a
                trace that belongs to another experiment; nothing is written.
            NotFound: the experiment does not exist.
        """
        exp = experiment_id_of(experiment_id)
        batch = prepare(spans, exp)
        if not batch.span_rows:
            return 0
        backend = self._uow.backend

        async def work(conn: AsyncConnection) -> None:
            await write_batch(conn, backend, exp, batch)

        await self._uow.run(
            work,
            write=True,
            idempotent=True,  # upserts: running the batch twice equals running it once
            messages={ErrorCode.NOT_FOUND: f"experiment {exp} does not exist"},
        )
        return len(batch.span_rows)

    async def get_spans(self, trace_id: str) -> list[Span]:
        """All spans of a trace, each parent before its children.

        Raises:
            NotFound: there is no such trace.
        """
        check_trace_id(trace_id)

        async def work(conn: AsyncConnection) -> list[Span]:
            return await load_spans(conn, trace_id, must_exist=True)

        return await self._uow.run(work, write=False)

    async def search_spans(
        self,
        experiment_id: int | str,
        *,
        status: SpanStatus | str | None = None,
        type: str | None = None,
        name: str | None = None,
        min_duration_ns: int | None = None,
        max_duration_ns: int | None = None,
        order_by: SpanOrder = "start",
        descending: bool = False,
        max_results: int = 100,
        page_token: str | None = None,
    ) -> Page[Span]:
        """Spans of one experiment that match every given filter, a page at a time.

        Ordered by start time or by duration (then trace_id, span_id), ascending
        unless ``descending``. Ordering by duration, or filtering on it, lists only
        finished spans. The experiment's span indexes serve each filter.

        Args:
            experiment_id: the experiment to search.
            status: UNSET, OK or ERROR.
            type: the span type, e.g. ``"LLM"``.
            name: the exact span name.
            min_duration_ns, max_duration_ns: inclusive duration bounds.
            order_by: ``"start"`` or ``"duration"``.
            descending: largest first.
            max_results: page size, 1 to 1000.
            page_token: the ``next_page_token`` of the previous page.

        Raises:
            InvalidParameter: a bad argument or page token.
        """
        exp = experiment_id_of(experiment_id)
        if order_by not in ("start", "duration"):
            raise InvalidParameter(f"order_by {order_by!r} is not valid: use 'start' or 'duration'")
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not 1 <= max_results <= MAX_SEARCH_RESULTS:
            raise InvalidParameter(
                f"max_results {max_results!r} is not valid: expected a whole number from 1 to {MAX_SEARCH_RESULTS}"
            )
        conditions: list[ColumnElement[bool]] = [spans_table.c.experiment_id == exp]
        if status is not None:
            if status not in {s.value for s in SpanStatus}:
                raise InvalidParameter(f"status {status!r} is not valid: use one of UNSET, OK, ERROR")
            conditions.append(spans_table.c.status == SpanStatus(status).value)
        for label, value in (("type", type), ("name", name)):
            if value is not None and not isinstance(value, str):
                raise InvalidParameter(f"{label} must be a string or None, got {value!r}")
        if type is not None:
            conditions.append(spans_table.c.type == type)
        if name is not None:
            conditions.append(spans_table.c.name == name)
        for label, bound in (("min_duration_ns", min_duration_ns), ("max_duration_ns", max_duration_ns)):
            if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool) or bound < 0):
                raise InvalidParameter(f"{label} {bound!r} is not valid: expected a whole number >= 0")
        if min_duration_ns is not None:
            conditions.append(spans_table.c.duration_ns >= min_duration_ns)
        if max_duration_ns is not None:
            conditions.append(spans_table.c.duration_ns <= max_duration_ns)
        key = spans_table.c.start_time_unix_nano if order_by == "start" else spans_table.c.duration_ns
        if order_by == "duration":
            conditions.append(key.is_not(None))
        query_id = fingerprint("spans", exp, status, type, name, min_duration_ns, max_duration_ns, order_by, descending)
        if page_token is not None:
            pos = decode_token(page_token, query_id)
            try:
                after = (int(pos["k"]), str(pos["t"]), str(pos["s"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise InvalidParameter("invalid page_token: pass the next_page_token unchanged") from exc
            conditions.append(_after(key, after, descending))
        columns = (key, spans_table.c.trace_id, spans_table.c.span_id)
        order = [c.desc() if descending else c.asc() for c in columns]
        stmt = (
            select(*columns, spans_table.c.content)
            .where(*conditions)
            .order_by(*order)
            .limit(max_results + 1)
        )

        async def work(conn: AsyncConnection) -> list[Any]:
            return list((await conn.execute(stmt)).all())

        rows = await self._uow.run(work, write=False)
        token = None
        if len(rows) > max_results:
            rows = rows[:max_results]
            last = rows[-1]
            token = encode_token({"k": last[0], "t": last[1], "s": last[2]}, query_id)
        return Page([content.decode(r[3], r[1], r[2]) for r in rows], token)


def _after(key: Any, after: tuple[int, str, str], descending: bool) -> ColumnElement[bool]:
    """Rows strictly after ``after`` in (key, trace_id, span_id) order.

    Spelled out with OR/AND rather than a row-value comparison, which MySQL does not
    turn into an index range.
    """
    k, t, s = after
    tid, sid = spans_table.c.trace_id, spans_table.c.span_id
    if descending:
        return or_(key < k, and_(key == k, or_(tid < t, and_(tid == t, sid < s))))
    return or_(key > k, and_(key == k, or_(tid > t, and_(tid == t, sid > s))))


async def load_spans(conn: AsyncConnection, trace_id: str, *, must_exist: bool) -> list[Span]:
    """The spans of one trace, parent first, read in the caller's transaction.

    Raises:
        NotFound: ``must_exist`` and the trace has no ``trace_info`` row.
    """
    rows = (
        await conn.execute(
            select(spans_table.c.span_id, spans_table.c.content).where(spans_table.c.trace_id == trace_id)
        )
    ).all()
    if not rows and must_exist:
        found = (await conn.execute(select(exists().where(trace_info.c.request_id == trace_id)))).scalar()
        if not found:
            raise NotFound(f"trace {trace_id} does not exist")
    return parent_first([content.decode(text, trace_id, span_id) for span_id, text in rows])
