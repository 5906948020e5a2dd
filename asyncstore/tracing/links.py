"""Traces linked to runs: MLflow's ``entity_associations`` rows.

A link is the row (``source_type`` 'trace', ``source_id`` the trace id,
``destination_type`` 'run', ``destination_id`` the run id), as MLflow's
``link_traces_to_run`` writes it, so that MLflow's ``search_traces(... "run_id = X")``
finds the traces asyncstore linked and the other way round.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import Select

from asyncstore.config import Backend
from asyncstore.dialect import upsert
from asyncstore.errors import NotFound
from asyncstore.rules import invalid, now_ms, run_id_of
from asyncstore.schema import entity_associations as links
from asyncstore.schema import runs, trace_info
from asyncstore.tracing.rows import check_trace_id
from asyncstore.uow import UnitOfWork

TRACE = "trace"
RUN = "run"
MAX_LINKS = 100
"""Traces one call may link or unlink (MLflow's limit for ``link_traces_to_run``)."""

_KEY = ("source_type", "source_id", "destination_type", "destination_id")


def _trace_ids(trace_ids: Sequence[str]) -> list[str]:
    if isinstance(trace_ids, str) or not isinstance(trace_ids, Sequence):
        invalid(f"trace_ids must be a list of trace ids, not {type(trace_ids).__name__}")
    if len(trace_ids) > MAX_LINKS:
        invalid(f"{len(trace_ids)} trace ids given; at most {MAX_LINKS} may be linked or unlinked at once")
    return list(dict.fromkeys(check_trace_id(t) for t in trace_ids))


async def _check_exist(conn: AsyncConnection, trace_ids: list[str], run_id: str) -> None:
    if await conn.scalar(select(runs.c.run_uuid).where(runs.c.run_uuid == run_id)) is None:
        raise NotFound(f"no run with id {run_id!r}")
    found = set((await conn.scalars(select(trace_info.c.request_id).where(trace_info.c.request_id.in_(trace_ids)))))
    unknown = [t for t in trace_ids if t not in found]
    if unknown:
        raise NotFound(f"no trace with id {unknown[0]!r}" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))


async def link_to_run(uow: UnitOfWork, trace_ids: Sequence[str], run_id: str) -> None:
    """Link traces to a run (idempotent); see :meth:`TraceRepository.link_to_run`."""
    ids = _trace_ids(trace_ids)
    run_id = run_id_of(run_id)
    if not ids:
        return
    backend: Backend = uow.backend

    async def work(conn: AsyncConnection) -> None:
        await _check_exist(conn, ids, run_id)
        now = now_ms()
        rows = [
            {
                "association_id": uuid.uuid4().hex, "source_type": TRACE, "source_id": t,
                "destination_type": RUN, "destination_id": run_id, "created_time": now,
            }
            for t in ids
        ]
        await conn.execute(upsert(backend, links, _KEY, ()), rows)

    await uow.run(work)


async def unlink_from_run(uow: UnitOfWork, trace_ids: Sequence[str], run_id: str) -> int:
    """Remove links between traces and a run; return how many there were."""
    ids = _trace_ids(trace_ids)
    run_id = run_id_of(run_id)
    if not ids:
        return 0

    async def work(conn: AsyncConnection) -> int:
        result = await conn.execute(
            delete(links).where(
                links.c.source_type == TRACE, links.c.source_id.in_(ids),
                links.c.destination_type == RUN, links.c.destination_id == run_id,
            )
        )
        return int(result.rowcount)

    return await uow.run(work)


async def linked_run_ids(uow: UnitOfWork, trace_id: str) -> list[str]:
    """The ids of the runs a trace is linked to, in the order they were linked."""
    trace_id = check_trace_id(trace_id)
    query = (
        select(links.c.destination_id)
        .where(links.c.source_type == TRACE, links.c.source_id == trace_id, links.c.destination_type == RUN)
        .order_by(links.c.created_time, links.c.destination_id)
    )
    return await uow.run(lambda conn: _all(conn, query), write=False)


async def linked_trace_ids(uow: UnitOfWork, run_id: str) -> list[str]:
    """The ids of the traces linked to a run, in the order they were linked."""
    run_id = run_id_of(run_id)
    query = (
        select(links.c.source_id)
        .where(links.c.destination_type == RUN, links.c.destination_id == run_id, links.c.source_type == TRACE)
        .order_by(links.c.created_time, links.c.source_id)
    )
    return await uow.run(lambda conn: _all(conn, query), write=False)


async def _all(conn: AsyncConnection, query: Select[Any]) -> list[str]:
    return list(await conn.scalars(query))
