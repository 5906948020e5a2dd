"""Deleting traces in bounded transactions.

Spans go first, at most ``DELETE_SPAN_CHUNK`` per transaction, then the trace rows,
whose tags, metadata and metrics follow by ``ON DELETE CASCADE``. No transaction
holds locks on more than a bounded number of rows, so deleting a million spans
does not block ingestion for its whole duration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore.config import Backend
from asyncstore.errors import InvalidParameter
from asyncstore.rules import experiment_id_of
from asyncstore.schema import spans, trace_info
from asyncstore.tracing.rows import check_trace_id
from asyncstore.uow import UnitOfWork

DELETE_TRACE_CHUNK = 500
"""Traces chosen per delete round (their tags, metadata and metrics go with them)."""
DELETE_SPAN_CHUNK = 10_000
"""Spans deleted per transaction: a delete never holds locks on more rows than this."""


async def delete_traces(
    uow: UnitOfWork, experiment_id: int | str, max_timestamp_ms: int | None, max_traces: int | None,
    trace_ids: Sequence[str] | None,
) -> int:
    """Run a trace delete (see :meth:`TraceRepository.delete`); return the number of traces deleted."""
    exp = experiment_id_of(experiment_id)
    if (max_timestamp_ms is None) == (trace_ids is None):
        raise InvalidParameter("give exactly one of max_timestamp_ms or trace_ids")
    if max_traces is not None:
        if max_timestamp_ms is None:
            raise InvalidParameter("max_traces can only be used with max_timestamp_ms")
        if isinstance(max_traces, bool) or not isinstance(max_traces, int) or max_traces <= 0:
            raise InvalidParameter(f"max_traces {max_traces!r} is not valid: expected a whole number > 0")
    if trace_ids is not None:
        if isinstance(trace_ids, str):
            raise InvalidParameter("trace_ids must be a list of trace ids, not one string")
        ids = sorted({check_trace_id(t) for t in trace_ids})
        return await _delete_ids(uow, exp, ids)
    if isinstance(max_timestamp_ms, bool) or not isinstance(max_timestamp_ms, int) or max_timestamp_ms < 0:
        raise InvalidParameter(f"max_timestamp_ms {max_timestamp_ms!r} is not valid: expected a whole number >= 0")
    cutoff = max_timestamp_ms
    deleted = 0
    while max_traces is None or deleted < max_traces:
        limit = DELETE_TRACE_CHUNK if max_traces is None else min(DELETE_TRACE_CHUNK, max_traces - deleted)

        async def pick(conn: AsyncConnection, limit: int = limit) -> list[str]:
            query = (
                select(trace_info.c.request_id)
                .where(trace_info.c.experiment_id == exp, trace_info.c.timestamp_ms <= cutoff)
                .order_by(trace_info.c.timestamp_ms, trace_info.c.request_id)
                .limit(limit)
            )
            return list((await conn.execute(query)).scalars().all())

        chosen = await uow.run(pick, write=False)
        if not chosen:
            break
        deleted += await _delete_ids(uow, exp, chosen)
    return deleted


async def _delete_ids(uow: UnitOfWork, exp: int, ids: list[str]) -> int:
    """Delete the given traces of ``exp``: spans in bounded chunks, then the rows."""
    deleted = 0
    backend = uow.backend
    for start in range(0, len(ids), DELETE_TRACE_CHUNK):
        chunk = ids[start : start + DELETE_TRACE_CHUNK]

        async def drop_spans(conn: AsyncConnection) -> int:
            if backend is Backend.MYSQL:
                # MySQL refuses LIMIT in an IN subquery but has DELETE ... LIMIT.
                stmt: Any = (
                    delete(spans)
                    .where(spans.c.trace_id.in_(chunk), spans.c.experiment_id == exp)
                    .with_dialect_options(mysql_limit=DELETE_SPAN_CHUNK)
                )
            else:
                inner = (
                    select(spans.c.trace_id, spans.c.span_id)
                    .where(spans.c.trace_id.in_(chunk), spans.c.experiment_id == exp)
                    .limit(DELETE_SPAN_CHUNK)
                )
                stmt = delete(spans).where(tuple_(spans.c.trace_id, spans.c.span_id).in_(inner))
            return int((await conn.execute(stmt)).rowcount)

        while await uow.run(drop_spans, idempotent=True) >= DELETE_SPAN_CHUNK:
            pass

        async def drop_traces(conn: AsyncConnection) -> int:
            result = await conn.execute(
                delete(trace_info).where(trace_info.c.request_id.in_(chunk), trace_info.c.experiment_id == exp)
            )
            return int(result.rowcount)

        deleted += await uow.run(drop_traces, idempotent=True)
    return deleted

