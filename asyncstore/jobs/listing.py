"""``store.jobs.list``: filtered iteration over jobs, paged by keyset on (creation_time, id)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from asyncstore.entities import Job, JobStatus
from asyncstore.errors import InvalidParameter
from asyncstore.jobs import rules
from asyncstore.jobs import sql as job_sql
from asyncstore.schema import jobs
from asyncstore.uow import UnitOfWork

PAGE_SIZE = 500
"""Rows read per page: one short read transaction per page."""


def list_jobs(
    uow: UnitOfWork,
    job_name: str | None,
    statuses: Iterable[JobStatus | str] | JobStatus | str | None,
    begin_timestamp: int | None,
    end_timestamp: int | None,
    params: Mapping[str, Any] | None,
    page_size: int,
) -> AsyncIterator[Job]:
    """Check the filters now and return the lazy iterator (see ``JobRepository.list``).

    Raises:
        InvalidParameter: a bad filter, before anything is read.
    """
    name = None if job_name is None else rules.job_name(job_name)
    wanted_statuses = rules.statuses(statuses)
    begin = rules.timestamp("begin_timestamp", begin_timestamp)
    end = rules.timestamp("end_timestamp", end_timestamp)
    if begin is not None and end is not None and begin > end:
        raise InvalidParameter(f"begin_timestamp {begin} is after end_timestamp {end}; give begin <= end")
    wanted = rules.params_filter(params)
    size = rules.bounded_int("page_size", page_size, 1, rules.MAX_PAGE_SIZE)
    conditions: list[ColumnElement[bool]] = []
    if name is not None:
        conditions.append(jobs.c.job_name == name)
    if wanted_statuses is not None:
        conditions.append(jobs.c.status.in_([int(s) for s in wanted_statuses]))
    if begin is not None:
        conditions.append(jobs.c.creation_time >= begin)
    if end is not None:
        conditions.append(jobs.c.creation_time <= end)
    if wanted:
        conditions.extend(job_sql.params_match_sql(uow.backend, wanted))
    return _pages(uow, conditions, wanted, size)


async def _pages(
    uow: UnitOfWork, conditions: list[ColumnElement[bool]], wanted: dict[str, Any] | None, size: int
) -> AsyncIterator[Job]:
    """Yield matching jobs page by page: ``WHERE … AND (creation_time, id) > :last ORDER BY
    creation_time, id LIMIT :size``. No transaction stays open while the caller runs."""
    after: tuple[int, str] | None = None
    while True:
        query = select(jobs).where(*conditions)
        if after is not None:
            at, last_id = after
            query = query.where(or_(jobs.c.creation_time > at, and_(jobs.c.creation_time == at, jobs.c.id > last_id)))
        query = query.order_by(jobs.c.creation_time, jobs.c.id).limit(size)

        async def fn(conn: AsyncConnection, query: Any = query) -> list[Any]:
            return list((await conn.execute(query)).all())

        rows = await uow.run(fn, write=False)
        for row in rows:
            job = job_sql.to_job(row)
            if wanted is None or job_sql.params_match(job.params, wanted):
                yield job
        if len(rows) < size:
            return
        after = (int(rows[-1].creation_time), rows[-1].id)
