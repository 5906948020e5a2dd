"""The job queue: enqueue, claim, heartbeat, finish, retry with backoff, time out, list.

A job moves through :class:`~asyncstore.entities.JobStatus`::

    create -> PENDING --claim/start--> RUNNING --finish--> SUCCEEDED
                 ^                       |  |---fail---------> FAILED
                 |                       |  |---mark_timed_out-> TIMEOUT
                 +--retry_or_fail--------+  +---cancel (also from PENDING)-> CANCELED
                 +--release (handed back, not an attempt)
                 +--requeue_expired (lease ran out: an attempt; FAILED when none is left)
                 +--reset (from RUNNING, FAILED, TIMEOUT, CANCELED)

Each transition is one UPDATE guarded by ``status IN (<allowed>)``, so it applies
only from the states it is allowed from and never overwrites a finished job; when
it matches no row, the job is looked up to say NOT_FOUND or INVALID_STATE naming its
state. A worker's calls also carry the claim's fencing token
(:attr:`~asyncstore.entities.Job.lease_token`, the claim's ``last_update_time``), so
a worker that stalled past its lease cannot touch the job once another has claimed
it. Times are epoch milliseconds on the database clock
(:func:`asyncstore.jobs.sql.now_ms`), so workers on different hosts agree on
leases and backoff. The claim, the clock and params matching are the per-backend
SQL, all in :mod:`asyncstore.jobs.sql`.
"""

from __future__ import annotations

import builtins
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from sqlalchemy import BigInteger, and_, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore.config import Backend
from asyncstore.entities import FinishedJob, Job, JobStatus, NewJob, RequeueResult
from asyncstore.errors import InvalidParameter, InvalidState, NotFound
from asyncstore.jobs import listing as job_listing
from asyncstore.jobs import rules
from asyncstore.jobs import sql as job_sql
from asyncstore.schema import jobs
from asyncstore.uow import UnitOfWork

_INSERT_BATCH = 500
"""Rows per multi-row INSERT of ``create_many``: 500 x 9 columns stays far below every
backend's bound-parameter limit (SQLite 32,766, asyncpg 32,767). Also the jobs per
statement of ``finish_many`` and ``heartbeat_many``."""
_SWEEP_BATCH = 1000
"""Expired leases handled per ``requeue_expired`` transaction."""
_DIED = "lease expired: its worker died or hung"
_DIED_TIMES = re.compile(re.escape(_DIED) + r" (\d+) times? in a row")

_P, _R = JobStatus.PENDING, JobStatus.RUNNING
# The states each transition is allowed from.
_ALLOWED: dict[str, tuple[JobStatus, ...]] = {
    "start": (_P,),
    "heartbeat": (_R,),
    "release": (_R,),
    "finish": (_R,),
    "fail": (_R,),
    "mark_timed_out": (_R,),
    "retry_or_fail": (_R,),
    "cancel": (_P, _R),
    "reset": (_R, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELED),
}


class JobRepository:
    """Async repository of the job queue (``store.jobs``).

    Example::

        job = await store.jobs.create("train", {"lr": 0.1})
        for claimed in await store.jobs.claim(["train"], limit=1, lease_seconds=30):
            await store.jobs.finish(claimed.job_id, "ok")
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    @property
    def _backend(self) -> Backend:
        return self._uow.backend

    # --- enqueue -----------------------------------------------------------------------

    async def create(self, job_name: str, params: Mapping[str, Any], timeout: float | None = None) -> Job:
        """Enqueue one PENDING job.

        Args:
            job_name: what to run (at most 500 characters).
            params: a dict of JSON-serialisable values, stored as JSON text.
            timeout: seconds one run may take (see :meth:`requeue_expired`), None for no limit.

        Raises:
            InvalidParameter: a bad name, params that are not JSON-serialisable, a bad timeout.
        """
        created = await self.create_many([NewJob(job_name, params, timeout)])
        return created[0]

    async def create_many(self, new_jobs: Iterable[NewJob]) -> builtins.list[Job]:
        """Enqueue a batch of PENDING jobs atomically, in a bounded number of statements.

        All get the same ``creation_time``; their ids sort in the order given, so they
        are claimed and listed in that order.

        Raises:
            InvalidParameter: any job is invalid (then none is created).
        """
        specs = builtins.list(new_jobs)
        rows: builtins.list[dict[str, Any]] = []
        for index, spec in enumerate(specs):
            if not isinstance(spec, NewJob):
                raise InvalidParameter(f"create_many takes NewJob items; item {index} is {type(spec).__name__}")
            rows.append(
                {
                    "job_name": rules.job_name(spec.job_name),
                    "params": rules.params_text(spec.params),
                    "timeout": rules.timeout(spec.timeout),
                }
            )
        for row, job_id in zip(rows, _ordered_uuids(len(rows))):
            row["id"] = job_id
        workspace = self._uow.state.config.workspace

        async def fn(conn: AsyncConnection) -> int:
            now = await job_sql.read_now_ms(conn, self._backend)
            for row in rows:
                row.update(
                    creation_time=now,
                    last_update_time=now,
                    next_attempt_at=now,
                    status=int(JobStatus.PENDING),
                    retry_count=0,
                    workspace=workspace,
                )
            for start in range(0, len(rows), _INSERT_BATCH):
                await conn.execute(insert(jobs), rows[start : start + _INSERT_BATCH])
            await job_sql.notify(conn, self._backend, [row["job_name"] for row in rows])
            return now

        if not rows:
            return []
        now = await self._uow.run(fn)
        return [
            Job(
                job_id=row["id"],
                job_name=row["job_name"],
                params=json.loads(row["params"]),
                timeout=row["timeout"],
                status=JobStatus.PENDING,
                result=None,
                retry_count=0,
                creation_time=now,
                last_update_time=now,
                lease_expires_at=None,
                next_attempt_at=now,
            )
            for row in rows
        ]

    # --- read --------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """Return one job.

        Raises:
            NotFound: no job has this id.
        """
        rules.job_id(job_id)

        async def fn(conn: AsyncConnection) -> Job:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
            if row is None:
                raise NotFound(f"job {job_id!r} does not exist")
            return job_sql.to_job(row)

        return await self._uow.run(fn, write=False)

    async def count_by_status(self, job_name: str | None = None) -> dict[JobStatus, int]:
        """Count jobs per status (every status present, zero included), optionally of one name."""
        name = None if job_name is None else rules.job_name(job_name)

        async def fn(conn: AsyncConnection) -> dict[JobStatus, int]:
            query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
            if name is not None:
                query = query.where(jobs.c.job_name == name)
            counts = dict.fromkeys(JobStatus, 0)
            for status, n in (await conn.execute(query)).all():
                counts[JobStatus(status)] = int(n)
            return counts

        return await self._uow.run(fn, write=False)

    # --- claim and lease ---------------------------------------------------------------

    async def claim(
        self,
        job_names: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float = rules.DEFAULT_LEASE_SECONDS,
    ) -> builtins.list[Job]:
        """Atomically take the oldest due PENDING jobs, mark them RUNNING, lease them.

        A job is due when its ``next_attempt_at`` has passed; the oldest due come first
        (by ``next_attempt_at``, then creation). No job is handed to two claimers; on
        PostgreSQL and MySQL/MariaDB concurrent claimers skip each other's rows (``FOR
        UPDATE SKIP LOCKED``) rather than wait, so an empty list means "nothing free
        right now", not necessarily "queue empty". The worker must :meth:`heartbeat`
        before ``lease_seconds`` run out, or :meth:`requeue_expired` returns the job to
        PENDING. SQL: :func:`asyncstore.jobs.sql.claim`.

        Args:
            job_names: only jobs with one of these names; None for any.
            limit: at most this many jobs (1 to 1000).
            lease_seconds: how long the claim holds without a heartbeat.

        Returns:
            The claimed jobs, oldest first, RUNNING, with ``lease_expires_at`` set and
            a new :attr:`~asyncstore.entities.Job.lease_token` each, to pass as
            ``token=`` to the calls that follow.
        """
        names = rules.job_names(job_names)
        count = rules.bounded_int("limit", limit, 1, rules.MAX_CLAIM)
        lease_ms = rules.seconds_ms("lease_seconds", lease_seconds)

        backend = self._backend

        async def fn(conn: AsyncConnection) -> builtins.list[Job]:
            return await _claim(conn, backend, names, count, lease_ms)

        return await self._uow.run(fn)

    async def finish_and_claim(
        self,
        finished: Iterable[FinishedJob],
        job_names: Sequence[str] | None = None,
        limit: int = 1,
        lease_seconds: float = rules.DEFAULT_LEASE_SECONDS,
    ) -> tuple[builtins.list[str], builtins.list[Job]]:
        """:meth:`finish_many`, then :meth:`claim`, in one transaction: a worker's step.

        A worker whose handlers just returned writes their results and takes its next
        jobs at the cost of one transaction instead of two.

        Returns:
            The ids that were not finished (as :meth:`finish_many`) and the jobs claimed
            (as :meth:`claim`).
        """
        items = _finished_items(finished)
        names = rules.job_names(job_names)
        count = rules.bounded_int("limit", limit, 1, rules.MAX_CLAIM)
        lease_ms = rules.seconds_ms("lease_seconds", lease_seconds)
        backend = self._backend

        async def fn(conn: AsyncConnection) -> tuple[builtins.list[str], builtins.list[Job]]:
            refused = await _finish(conn, backend, items)
            return refused, await _claim(conn, backend, names, count, lease_ms)

        return await self._uow.run(fn)

    async def start(self, job_id: str, lease_seconds: float | None = None) -> Job:
        """Move a PENDING job to RUNNING (MLflow's start_job).

        Args:
            job_id: the job.
            lease_seconds: give the job a lease as :meth:`claim` does; None for none (then
                :meth:`requeue_expired` never requeues it, but its timeout still applies).

        Returns:
            The RUNNING job, with a new :attr:`~asyncstore.entities.Job.lease_token`.

        Raises:
            NotFound: no such job. InvalidState: the job is not PENDING.
        """
        lease_ms = None if lease_seconds is None else rules.seconds_ms("lease_seconds", lease_seconds)
        now = job_sql.now_ms(self._backend)
        return await self._transition(
            "start",
            job_id,
            None,
            status=int(_R),
            lease_expires_at=None if lease_ms is None else now + lease_ms,
            last_update_time=job_sql.new_lease_token(self._backend),
        )

    async def heartbeat(
        self, job_id: str, lease_seconds: float = rules.DEFAULT_LEASE_SECONDS, *, token: int | None = None
    ) -> Job:
        """Extend a RUNNING job's lease to now + ``lease_seconds`` (status time unchanged).

        Args:
            job_id: the job.
            lease_seconds: the new lease, from now.
            token: the claim's :attr:`~asyncstore.entities.Job.lease_token`; None for
                the job's current claim, whoever holds it.

        Raises:
            NotFound: no such job. InvalidState: the job is no longer RUNNING (its lease
                expired and it was requeued, or it was canceled), or it was claimed
                again since ``token``: stop working on it.
        """
        lease_ms = rules.seconds_ms("lease_seconds", lease_seconds)
        return await self._transition(
            "heartbeat", job_id, token, lease_expires_at=job_sql.now_ms(self._backend) + lease_ms
        )

    async def heartbeat_many(
        self, leases: Mapping[str, int], lease_seconds: float = rules.DEFAULT_LEASE_SECONDS
    ) -> builtins.set[str]:
        """Extend the leases of many claimed jobs at once: a worker's periodic heartbeat.

        Args:
            leases: job id -> the :attr:`~asyncstore.entities.Job.lease_token` of its claim.
            lease_seconds: the new leases, from now.

        Returns:
            The ids whose lease was extended. A job missing from it is no longer
            RUNNING under that token (requeued, canceled, timed out, claimed again):
            its worker should stop working on it.
        """
        lease_ms = rules.seconds_ms("lease_seconds", lease_seconds)
        pairs = _leases(leases)
        backend = self._backend

        async def fn(conn: AsyncConnection) -> builtins.set[str]:
            held: builtins.set[str] = set()
            for start in range(0, len(pairs), _INSERT_BATCH):
                held |= await job_sql.heartbeat(conn, backend, pairs[start : start + _INSERT_BATCH], lease_ms)
            return held

        if not pairs:
            return set()
        return await self._uow.run(fn)

    async def release(self, job_id: str, *, token: int | None = None) -> Job:
        """Hand a RUNNING job back to PENDING, claimable at once in its old place.

        For a worker that shuts down before the job ran to its end: unlike
        :meth:`retry_or_fail` this is not an attempt (the retry count and result are
        kept). Announced to idle workers on PostgreSQL.

        Raises:
            NotFound: no such job. InvalidState: the job is not RUNNING, or was claimed
                again since ``token``.
        """
        return await self._transition(
            "release", job_id, token, announce=True,
            status=int(_P), lease_expires_at=None, last_update_time=job_sql.status_time(self._backend),
        )

    async def requeue_expired(
        self,
        max_retries: int | None = None,
        *,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        backoff_jitter: float | None = None,
    ) -> RequeueResult:
        """Time out overdue RUNNING jobs; requeue (or fail) those whose lease expired.

        In one transaction: a RUNNING job whose own ``timeout`` has passed since it
        started (``last_update_time``) becomes TIMEOUT, whether or not a worker still
        heartbeats it. Then a RUNNING job whose lease has expired (its worker died or
        hung) has used an attempt, as if its handler had failed: with retries left it
        becomes PENDING with its retry count + 1, claimable after the backoff of
        :meth:`retry_or_fail`; with none left it becomes FAILED with the result
        ``lease expired: its worker died or hung N times in a row; …``, so a job
        that kills every worker running it is not requeued for ever. Up to 1,000
        expired leases per call. Safe to run from many hosts at once: each job is
        counted by one of them.

        Args:
            max_retries, backoff_base, backoff_cap, backoff_jitter: as for
                :meth:`retry_or_fail` (the ``ASYNCSTORE_JOB_*`` variables by default).
        """
        policy = rules.retry_policy(max_retries, backoff_base, backoff_cap, backoff_jitter)
        backend = self._backend

        async def fn(conn: AsyncConnection) -> RequeueResult:
            now = job_sql.now_ms(backend)
            running = jobs.c.status == int(_R)
            overdue = and_(
                running, jobs.c.timeout.is_not(None), jobs.c.last_update_time + jobs.c.timeout * 1000 <= now
            )
            timed_out = await conn.execute(
                update(jobs)
                .where(overdue)
                .values(
                    status=int(JobStatus.TIMEOUT),
                    lease_expires_at=None,
                    last_update_time=now,
                    result="timed out: ran longer than its timeout",
                )
            )
            retried, failed = [], []
            for row in await job_sql.lock_expired(conn, backend, _SWEEP_BATCH):
                previous = _DIED_TIMES.match(row.result or "")
                times = (int(previous.group(1)) if previous else 0) + 1
                died = f"{_DIED} {times} time{'s' if times > 1 else ''} in a row"
                keys = {"b_id": row.id, "b_token": row.last_update_time}
                if row.retry_count >= policy.max_retries:
                    message = f"{died}; no retries left (max_retries {policy.max_retries}), so it is FAILED"
                    failed.append({**keys, "b_result": message})
                else:
                    retried.append(
                        {**keys, "b_result": died, "b_delay": policy.backoff_ms(row.retry_count)}
                    )
            fenced = and_(
                jobs.c.id == bindparam("b_id"), running, jobs.c.last_update_time == bindparam("b_token")
            )
            if retried:
                await conn.execute(
                    update(jobs)
                    .where(fenced)
                    .values(
                        status=int(_P),
                        retry_count=jobs.c.retry_count + 1,
                        next_attempt_at=job_sql.status_time(backend) + bindparam("b_delay", type_=BigInteger),
                        result=bindparam("b_result"),
                        lease_expires_at=None,
                        last_update_time=job_sql.status_time(backend),
                    ),
                    retried,
                )
            if failed:
                await conn.execute(
                    update(jobs)
                    .where(fenced)
                    .values(
                        status=int(JobStatus.FAILED),
                        result=bindparam("b_result"),
                        lease_expires_at=None,
                        last_update_time=now,
                    ),
                    failed,
                )
            return RequeueResult(requeued=len(retried), timed_out=int(timed_out.rowcount), failed=len(failed))

        return await self._uow.run(fn)

    # --- finish ------------------------------------------------------------------------
    #
    # ``token``: the claim's Job.lease_token. With it, a call applies only while the
    # job is RUNNING under that claim (a worker's call); without it, to the job's
    # current claim (an operator's call).

    async def finish(self, job_id: str, result: str, *, token: int | None = None) -> Job:
        """Mark a RUNNING job SUCCEEDED with its result (a string, e.g. JSON).

        Raises:
            NotFound: no such job. InvalidState: the job is not RUNNING, or was claimed
                again since ``token``.
            InvalidParameter: result is not a string or longer than 65,535 bytes.
        """
        return await self._end("finish", job_id, token, JobStatus.SUCCEEDED, rules.text("result", result))

    async def finish_many(self, finished: Iterable[FinishedJob]) -> builtins.list[str]:
        """Mark many RUNNING jobs SUCCEEDED in one transaction: a worker's batched finish.

        Each job is finished only while it is RUNNING under its token (any claim when
        the token is None); one that is not is left as it is and named in the result,
        so that a stale job never holds up the others. Two statements per 500 jobs
        (lock the held rows, then one UPDATE with a ``CASE`` of the results).

        Returns:
            The ids that were not finished (no longer RUNNING under that token, or
            unknown), in the order given; empty when all were.

        Raises:
            InvalidParameter: an item that is not a FinishedJob, a bad id or result, the
                same job twice (then nothing is finished).
        """
        items = _finished_items(finished)
        backend = self._backend

        async def fn(conn: AsyncConnection) -> builtins.list[str]:
            return await _finish(conn, backend, items)

        if not items:
            return []
        return await self._uow.run(fn)

    async def fail(self, job_id: str, error: str, *, token: int | None = None) -> Job:
        """Mark a RUNNING job FAILED for good, keeping ``error`` as its result.

        Raises:
            NotFound: no such job. InvalidState: the job is not RUNNING, or was claimed
                again since ``token``.
        """
        return await self._end("fail", job_id, token, JobStatus.FAILED, rules.text("error", error))

    async def mark_timed_out(self, job_id: str, *, token: int | None = None, error: str = "timed out") -> Job:
        """Mark a RUNNING job TIMEOUT (its worker gave up on it), with ``error`` as its result.

        Raises:
            NotFound: no such job. InvalidState: the job is not RUNNING, or was claimed
                again since ``token``.
        """
        return await self._end("mark_timed_out", job_id, token, JobStatus.TIMEOUT, rules.text("error", error))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a PENDING or RUNNING job; a RUNNING job's worker learns it on its next call.

        Raises:
            NotFound: no such job. InvalidState: the job has finished already.
        """
        return await self._end("cancel", job_id, None, JobStatus.CANCELED, None)

    async def reset(self, job_id: str) -> Job:
        """Give a RUNNING, FAILED, TIMEOUT or CANCELED job a fresh start as PENDING.

        The retry count, result and lease are cleared and it is due at once. A
        SUCCEEDED job is never reset (create a new one).

        Raises:
            NotFound: no such job. InvalidState: the job is PENDING or SUCCEEDED.
        """
        now = job_sql.status_time(self._backend)
        return await self._transition(
            "reset",
            job_id,
            None,
            announce=True,
            status=int(_P),
            retry_count=0,
            result=None,
            lease_expires_at=None,
            last_update_time=now,
            next_attempt_at=now,
        )

    async def retry_or_fail(
        self,
        job_id: str,
        error: str,
        max_retries: int | None = None,
        *,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        backoff_jitter: float | None = None,
        token: int | None = None,
    ) -> int | None:
        """Send a failed RUNNING job back to PENDING after a backoff, or fail it for good.

        If the job was retried fewer than ``max_retries`` times it becomes PENDING with
        its retry count + 1 and may be claimed again from ``next_attempt_at = now +
        wait`` (database clock), where the full wait is ``min(backoff_cap, backoff_base
        * 2 ** retries_so_far)`` and a random share ``backoff_jitter`` of it is taken
        off; else it becomes FAILED. Either way ``error`` is kept as its result.

        Args:
            job_id: the job.
            error: what went wrong.
            max_retries: default ``ASYNCSTORE_JOB_MAX_RETRIES``, else 3.
            backoff_base: seconds; default ``ASYNCSTORE_JOB_BACKOFF_BASE``, else 1.
            backoff_cap: seconds; default ``ASYNCSTORE_JOB_BACKOFF_CAP``, else 300.
            backoff_jitter: 0 to 1; default ``ASYNCSTORE_JOB_BACKOFF_JITTER``, else 0.5.
            token: the claim's lease token (see :meth:`finish`).

        Returns:
            The new retry count, or None when the job is now FAILED.

        Raises:
            NotFound: no such job. InvalidState: the job is not RUNNING, or was claimed
                again since ``token``.
            ConfigurationError: a bad keyword or environment value (named).
        """
        rules.job_id(job_id)
        rules.token(token)
        message = rules.text("error", error)
        policy = rules.retry_policy(max_retries, backoff_base, backoff_cap, backoff_jitter)
        backend = self._backend

        async def fn(conn: AsyncConnection) -> int | None:
            query = select(jobs.c.status, jobs.c.retry_count).where(_guard("retry_or_fail", job_id, token))
            row = (await conn.execute(job_sql.for_update(backend, query))).first()
            if row is None:
                await _refuse(conn, "retry_or_fail", job_id, token)
            seen = int(row.retry_count)
            now = job_sql.now_ms(backend)
            values: dict[str, Any] = {"result": message, "lease_expires_at": None, "last_update_time": now}
            if seen >= policy.max_retries:
                values["status"] = int(JobStatus.FAILED)
            else:
                pending_since = job_sql.status_time(backend)
                values.update(
                    status=int(_P),
                    retry_count=seen + 1,
                    next_attempt_at=pending_since + policy.backoff_ms(seen),
                    last_update_time=pending_since,
                )
            guard = and_(_guard("retry_or_fail", job_id, token), jobs.c.retry_count == seen)
            if (await conn.execute(update(jobs).where(guard).values(**values))).rowcount != 1:
                await _refuse(conn, "retry_or_fail", job_id, token)
            return None if seen >= policy.max_retries else seen + 1

        return await self._uow.run(fn)

    # --- helpers -----------------------------------------------------------------------

    async def _end(self, op: str, job_id: str, token: int | None, status: JobStatus, result: str | None) -> Job:
        return await self._transition(
            op,
            job_id,
            token,
            status=int(status),
            result=result,
            lease_expires_at=None,
            last_update_time=job_sql.now_ms(self._backend),
        )

    async def _transition(
        self, op: str, job_id: str, token: int | None, *, announce: bool = False, **values: Any
    ) -> Job:
        """One guarded UPDATE: ``... WHERE id = :id AND status IN (<allowed for op>) [AND last_update_time = :token]``.

        ``announce``: the job is claimable at once afterwards; tell idle workers
        (:func:`asyncstore.jobs.sql.notify`).
        """
        rules.job_id(job_id)
        stmt = update(jobs).where(_guard(op, job_id, token)).values(**values)
        backend = self._backend

        async def fn(conn: AsyncConnection) -> Job:
            row = await job_sql.update_one(conn, backend, stmt, job_id)
            if row is None:
                await _refuse(conn, op, job_id, token)
            if announce:
                await job_sql.notify(conn, backend, [row.job_name])
            return job_sql.to_job(row)

        return await self._uow.run(fn)

    # --- list (last: its name shadows the builtin inside the class body) -----------------

    def list(
        self,
        job_name: str | None = None,
        statuses: Iterable[JobStatus | str] | JobStatus | str | None = None,
        begin_timestamp: int | None = None,
        end_timestamp: int | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        page_size: int = job_listing.PAGE_SIZE,
    ) -> AsyncIterator[Job]:
        """Iterate over matching jobs, oldest first (MLflow's list_jobs).

        The arguments are checked at once; rows are read lazily, ``page_size`` at a
        time, by keyset on ``(creation_time, id)`` (not OFFSET), each page in its own
        short read transaction, so jobs created meanwhile neither repeat nor vanish.

        Args:
            job_name: only jobs of this name.
            statuses: only jobs in these states (JobStatus members or names).
            begin_timestamp: only jobs created at or after this epoch ms.
            end_timestamp: only jobs created at or before this epoch ms.
            params: only jobs whose params hold every given key with an equal JSON
                value. Matched in SQL (PostgreSQL ``jsonb @>``, MySQL/MariaDB
                ``JSON_CONTAINS``, SQLite ``json_type``/``json_extract`` per key), then
                confirmed in Python for exact JSON equality on every backend; see
                :func:`asyncstore.jobs.sql.params_match_sql` for what each does.
            page_size: rows per database round trip (1 to 10,000).

        Example::

            async for job in store.jobs.list("train", statuses=[JobStatus.FAILED]):
                print(job.job_id, job.result)
        """
        return job_listing.list_jobs(
            self._uow, job_name, statuses, begin_timestamp, end_timestamp, params, page_size
        )


async def _claim(
    conn: AsyncConnection, backend: Backend, names: Sequence[str] | None, count: int, lease_ms: int
) -> builtins.list[Job]:
    rows = await job_sql.claim(conn, backend, names, count, lease_ms)
    claimed = [job_sql.to_job(row) for row in rows]
    # Jobs MLflow created (next_attempt_at NULL) first, as SQLite and MySQL sort them.
    return sorted(
        claimed, key=lambda j: (j.next_attempt_at is not None, j.next_attempt_at, j.creation_time, j.job_id)
    )


def _finished_items(finished: Iterable[FinishedJob]) -> builtins.list[FinishedJob]:
    """Check a batch of finished jobs: FinishedJob items, valid ids, results and tokens, each job once."""
    items = builtins.list(finished)
    seen: builtins.set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, FinishedJob):
            raise InvalidParameter(f"finish_many takes FinishedJob items; item {index} is {type(item).__name__}")
        rules.job_id(item.job_id)
        rules.text("result", item.result)
        rules.token(item.token)
        if item.job_id in seen:
            raise InvalidParameter(f"job {item.job_id!r} is given twice; finish each job once")
        seen.add(item.job_id)
    return items


async def _finish(conn: AsyncConnection, backend: Backend, items: Sequence[FinishedJob]) -> builtins.list[str]:
    """Finish the held jobs of ``items``, 500 per statement; return the ids refused, in the order given."""
    done: builtins.set[str] = set()
    for start in range(0, len(items), _INSERT_BATCH):
        chunk = items[start : start + _INSERT_BATCH]
        done |= await job_sql.finish(conn, backend, [(item.job_id, item.token, item.result) for item in chunk])
    return [item.job_id for item in items if item.job_id not in done]


def _guard(op: str, job_id: str, token: int | None) -> Any:
    """``id = :job_id AND status IN (<allowed for op>)``, and the claim's token when given."""
    rules.token(token)
    guard = and_(jobs.c.id == job_id, jobs.c.status.in_([int(s) for s in _ALLOWED[op]]))
    return guard if token is None else and_(guard, jobs.c.last_update_time == token)


def _leases(leases: Mapping[str, int]) -> builtins.list[tuple[str, int]]:
    """Check a ``{job_id: token}`` mapping of held leases."""
    if not isinstance(leases, Mapping):
        raise InvalidParameter(f"leases must be a dict of job id -> lease token, not {type(leases).__name__}")
    pairs = []
    for job_id, token in leases.items():
        rules.job_id(job_id)
        checked = rules.token(token)
        if checked is None:
            raise InvalidParameter(f"the lease token of job {job_id!r} is None; give the token its claim returned")
        pairs.append((job_id, checked))
    return pairs


async def _refuse(conn: AsyncConnection, op: str, job_id: str, token: int | None = None) -> NoReturn:
    """Raise NOT_FOUND or INVALID_STATE (naming the job's state, or its newer claim) for a refused transition."""
    row = (await conn.execute(select(jobs.c.status, jobs.c.last_update_time).where(jobs.c.id == job_id))).first()
    if row is None:
        raise NotFound(f"job {job_id!r} does not exist")
    status = JobStatus(row.status)
    if token is not None and status in _ALLOWED[op] and row.last_update_time != token:
        raise InvalidState(
            f"cannot {op} job {job_id!r}: it was claimed again since lease token {token} "
            f"(its claim now has token {row.last_update_time}); another worker holds it, stop working on it"
        )
    allowed = " or ".join(s.name for s in _ALLOWED[op])
    raise InvalidState(
        f"cannot {op} job {job_id!r}: it is {status.name}; {op} applies only to a {allowed} job"
    )


def _ordered_uuids(count: int) -> builtins.list[str]:
    """``count`` UUIDv7-style ids that sort in the order made (time first, then a counter).

    Layout (RFC 9562 version 7): 48-bit epoch ms | version 7 | 74 bits that hold a
    random start plus the index, so ids of one batch are consecutive and jobs created
    in the same millisecond are listed and claimed in the order given.
    """
    millis = time.time_ns() // 1_000_000
    start = secrets.randbits(73)  # leaves room for 2**73 increments before overflow
    ids = []
    for index in range(count):
        tail = start + index
        value = (millis << 80) | (0x7 << 76) | ((tail >> 62) << 64) | (0b10 << 62) | (tail & ((1 << 62) - 1))
        ids.append(str(uuid.UUID(int=value)))
    return ids
