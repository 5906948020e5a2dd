"""The job queue's backend-specific SQL, in one place: the clock, lease tokens, locks and updates
(one job, or the jobs a worker holds), the claim, expired leases, NOTIFY, params matching.

Everything else in :mod:`asyncstore.jobs.queue` is plain SQLAlchemy Core that renders
the same on every backend. The things below differ per backend, so each is
written out here, dispatched exhaustively on :class:`~asyncstore.config.Backend`, with
the SQL it renders shown next to it. No user input is ever part of the SQL text:
job names, ids, times and params filters are bound parameters.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select
from typing_extensions import assert_never

from asyncstore.config import Backend
from asyncstore.engines import engine_state
from asyncstore.entities import Job, JobStatus
from asyncstore.schema import jobs

# --- the database clock ----------------------------------------------------------------
#
# Leases, backoff and requeueing compare times written by workers on different hosts,
# so every time the queue writes comes from the database server's clock, never from
# the host's. (SQLite is embedded: its "server" is this host, shared by every process
# that opens the file.) Each expression is stable within one statement.
_NOW_MS_SQL: dict[Backend, str] = {
    # statement_timestamp(): when the statement arrived; epoch seconds (numeric) -> ms.
    Backend.POSTGRESQL: "CAST(FLOOR(EXTRACT(EPOCH FROM statement_timestamp()) * 1000) AS BIGINT)",
    # NOW(3) has millisecond precision; UNIX_TIMESTAMP of it is a DECIMAL(…,3).
    Backend.MYSQL: "CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)",
    # strftime('%s') is whole seconds and '%f' is "SS.SSS": add its milliseconds.
    Backend.SQLITE: (
        "(CAST(strftime('%s', 'now') AS INTEGER) * 1000"
        " + CAST(substr(strftime('%f', 'now'), 4) AS INTEGER))"
    ),
}


def now_ms(backend: Backend) -> ColumnElement[int]:
    """The SQL expression for "now" in epoch milliseconds on the database clock."""
    if backend is Backend.POSTGRESQL or backend is Backend.MYSQL or backend is Backend.SQLITE:
        return literal_column(_NOW_MS_SQL[backend], BigInteger)
    assert_never(backend)


async def read_now_ms(conn: AsyncConnection, backend: Backend) -> int:
    """Read the database clock: ``SELECT <now_ms>``."""
    return int((await conn.execute(select(now_ms(backend)))).scalar_one())


# --- locking and updating one job --------------------------------------------------------


def for_update(backend: Backend, query: Select[Any]) -> Select[Any]:
    """``query`` locking the rows it reads until the transaction ends.

    PostgreSQL and MySQL/MariaDB: ``SELECT ... FOR UPDATE``. SQLite: the query as it
    is; the unit of work begins write transactions with ``BEGIN IMMEDIATE``, which
    holds the database's single write lock already.
    """
    if backend is Backend.POSTGRESQL or backend is Backend.MYSQL:
        return query.with_for_update()
    if backend is Backend.SQLITE:
        return query
    assert_never(backend)


async def update_one(conn: AsyncConnection, backend: Backend, stmt: Update, job_id: str) -> Any | None:
    """Run a guarded UPDATE of job ``job_id``; return its updated row, or None when it matched none.

    PostgreSQL and SQLite: ``UPDATE ... RETURNING *``. MySQL/MariaDB, which has no
    UPDATE ... RETURNING: the UPDATE, then ``SELECT * FROM jobs WHERE id = :job_id``
    when it changed a row.
    """
    if backend is Backend.POSTGRESQL or backend is Backend.SQLITE:
        return (await conn.execute(stmt.returning(*jobs.c))).first()
    if backend is Backend.MYSQL:
        if (await conn.execute(stmt)).rowcount != 1:
            return None
        return (await conn.execute(select(jobs).where(jobs.c.id == job_id))).one()
    assert_never(backend)


# --- claiming ----------------------------------------------------------------------------
#
# The queue order is "due first": next_attempt_at (set to the creation time on
# create, pushed into the future by a retry's backoff), then creation_time, then id.
# It is exactly the index index_jobs_claim_order (status, next_attempt_at,
# creation_time, id), so a claimer reads the first `limit` due rows of that index and
# stops: it never scans, let alone locks, the rest of the queue, nor sorts the jobs of
# one batch (one creation time). A NULL
# next_attempt_at (a job MLflow created) is due; it sorts where the backend sorts
# NULLs in the index (first on SQLite and MySQL, last on PostgreSQL), so the index
# still gives the order.


def _candidates(backend: Backend, by_name: bool, node_share: bool = False) -> Select[Any]:
    """The ids of the oldest due PENDING jobs::

        SELECT id FROM jobs
        WHERE status = 0 /* PENDING */
          AND (next_attempt_at <= <now_ms> OR next_attempt_at IS NULL)
          [AND job_name IN (:names)]
          [AND CRC32(id) % :nodes = :node]   -- node_share: a Galera node's share
        ORDER BY next_attempt_at, creation_time, id
        LIMIT :limit
    """
    due = or_(jobs.c.next_attempt_at <= now_ms(backend), jobs.c.next_attempt_at.is_(None))
    query = select(jobs.c.id).where(jobs.c.status == int(JobStatus.PENDING), due)
    if by_name:
        query = query.where(jobs.c.job_name.in_(bindparam("names", expanding=True)))
    if node_share:
        query = query.where(func.crc32(jobs.c.id) % bindparam("nodes") == bindparam("node"))
    order = query.order_by(jobs.c.next_attempt_at, jobs.c.creation_time, jobs.c.id)
    return order.limit(bindparam("limit", type_=BigInteger))


def new_lease_token(backend: Backend) -> ColumnElement[int]:
    """The ``last_update_time`` a claim writes: ``GREATEST(<now_ms>, last_update_time + 1)``.

    A claimed job's ``last_update_time`` is its lease token (:attr:`Job.lease_token`):
    the claimer's calls are guarded by ``last_update_time = :token``, and a heartbeat
    never moves it. Every claim of a job takes a token greater than any that job had
    before, even within one millisecond or when the database clock steps back (the
    moves back to PENDING write :func:`status_time`, never less than the token), so
    a worker whose lease was taken over holds a token that no longer matches.
    MLflow's ``jobs`` table needs no new column for it.
    """
    return _not_before(backend, jobs.c.last_update_time + 1)


def status_time(backend: Backend) -> ColumnElement[int]:
    """The ``last_update_time`` of a move back to PENDING: ``GREATEST(<now_ms>, last_update_time)``.

    Never earlier than the claim it ends, so the next claim's token is greater. A
    retry's ``next_attempt_at`` is this plus the backoff; the expression is the same
    whether MySQL evaluates it before or after it assigns ``last_update_time``.
    """
    return _not_before(backend, jobs.c.last_update_time)


def _not_before(backend: Backend, floor: ColumnElement[int]) -> ColumnElement[int]:
    """``GREATEST(<now_ms>, floor)`` (SQLite: the scalar ``max(a, b)``)."""
    if backend is Backend.POSTGRESQL or backend is Backend.MYSQL:
        return func.greatest(now_ms(backend), floor)
    if backend is Backend.SQLITE:
        return func.max(now_ms(backend), floor)
    assert_never(backend)


def _running_values(backend: Backend) -> dict[str, Any]:
    """SET status = 1 /* RUNNING */, lease_expires_at = <now_ms> + :lease_ms, last_update_time = <new token>.

    The result is kept: while a retried job runs it still shows the last attempt's
    error (as in MLflow), and a lease that expires again counts deaths in a row.
    """
    return {
        "status": int(JobStatus.RUNNING),
        "lease_expires_at": now_ms(backend) + bindparam("lease_ms", type_=BigInteger),
        "last_update_time": new_lease_token(backend),
    }


@functools.cache
def _claim_statements(backend: Backend, by_name: bool) -> tuple[Any, ...]:
    """The claim's statements for ``backend``, built once (see :func:`claim`); values are bound per call."""
    values = _running_values(backend)
    if backend is Backend.POSTGRESQL:
        picked = _candidates(backend, by_name).with_for_update(skip_locked=True).cte("candidates")
        return (update(jobs).where(jobs.c.id == picked.c.id).values(**values).returning(*jobs.c),)
    if backend is Backend.MYSQL:
        guarded = jobs.c.id.in_(bindparam("ids", expanding=True)) & (jobs.c.status == int(JobStatus.PENDING))
        return (
            _candidates(backend, by_name).with_for_update(skip_locked=True),
            update(jobs).where(guarded).values(**values),
            select(jobs).where(jobs.c.id.in_(bindparam("ids", expanding=True))),
            _candidates(backend, by_name, node_share=True).with_for_update(skip_locked=True),
        )
    if backend is Backend.SQLITE:
        guarded = jobs.c.id.in_(_candidates(backend, by_name)) & (jobs.c.status == int(JobStatus.PENDING))
        return (update(jobs).where(guarded).values(**values).returning(*jobs.c),)
    assert_never(backend)


async def claim(
    conn: AsyncConnection, backend: Backend, job_names: Sequence[str] | None, limit: int, lease_ms: int
) -> list[Any]:
    """Atomically move up to ``limit`` due PENDING jobs to RUNNING; return their rows.

    No row is ever handed to two claimers:

    * PostgreSQL: one statement. The CTE locks the candidates with ``FOR UPDATE SKIP
      LOCKED``, so concurrent claimers pass over rows another claimer holds instead of
      queueing behind it, and in READ COMMITTED a locked row is re-checked against the
      WHERE clause, so a row claimed and committed meanwhile is not taken again::

          WITH candidates AS (
              SELECT id FROM jobs WHERE status = 0 AND <due>
              ORDER BY next_attempt_at, creation_time, id LIMIT :limit
              FOR UPDATE SKIP LOCKED)
          UPDATE jobs SET status = 1, lease_expires_at = <now> + :lease_ms, ...
          FROM candidates WHERE jobs.id = candidates.id
          RETURNING jobs.*

    * MySQL/MariaDB (10.6+ for SKIP LOCKED): MariaDB has no UPDATE … RETURNING, so
      three statements in one transaction. The SELECT locks the rows it returns
      (skipping rows locked by other claimers) until COMMIT; the UPDATE repeats the
      ``status = 0`` guard; the last SELECT reads the rows back::

          SELECT id FROM jobs WHERE status = 0 AND <due>
          ORDER BY next_attempt_at, creation_time, id LIMIT :limit
          FOR UPDATE SKIP LOCKED;
          UPDATE jobs SET status = 1, ... WHERE id IN (:ids) AND status = 0;
          SELECT * FROM jobs WHERE id IN (:ids);

      On a Galera node ``FOR UPDATE`` locks on that node only: claimers on two nodes
      can select the same rows, and one of them is then aborted (a deadlock error; the
      unit of work runs its claim again). All claimers would select the queue's head,
      so there each node first claims from its own share of the jobs (``CRC32(id) %
      cluster size = its index``, oldest due first), and from the others' only when its
      share has none due: conflicts become rare, and jobs still start oldest first
      within each share.

    * SQLite: the unit of work begins write transactions with ``BEGIN IMMEDIATE``, so
      this transaction holds the database's single write lock from its first
      statement; one conditional UPDATE picks and moves the rows::

          UPDATE jobs SET status = 1, ...
          WHERE id IN (SELECT id FROM jobs WHERE status = 0 AND ... LIMIT :limit)
            AND status = 0
          RETURNING *

    The statements are built once per backend (:func:`_claim_statements`); a call
    only binds its values, so a worker's claim costs no statement construction.
    """
    statements = _claim_statements(backend, job_names is not None)
    params: dict[str, Any] = {"limit": limit, "lease_ms": lease_ms}
    if job_names is not None:
        params["names"] = list(job_names)
    if backend is Backend.POSTGRESQL or backend is Backend.SQLITE:
        return list((await conn.execute(statements[0], params)).all())
    if backend is Backend.MYSQL:
        locked, take, read, locked_share = statements
        node = engine_state(conn.engine).galera
        ids = []
        if node is not None and node[1] > 1:
            share = {**params, "node": node[0], "nodes": node[1]}
            ids = list((await conn.execute(locked_share, share)).scalars().all())
        if not ids:
            ids = list((await conn.execute(locked, params)).scalars().all())
        if not ids:
            return []
        await conn.execute(take, {**params, "ids": ids})
        return list((await conn.execute(read, {"ids": ids})).all())
    assert_never(backend)


# --- updating the jobs a worker holds ------------------------------------------------------


def _held_values(backend: Backend, kind: str) -> dict[str, Any]:
    """The SET clause of :func:`finish` (``kind`` "finish") or :func:`heartbeat` ("heartbeat")."""
    if kind == "finish":
        return {
            "status": int(JobStatus.SUCCEEDED), "result": bindparam("result", type_=Text), "lease_expires_at": None,
            "last_update_time": now_ms(backend),
        }
    return {"lease_expires_at": now_ms(backend) + bindparam("lease_ms", type_=BigInteger)}


@functools.cache
def _held_statements(backend: Backend, kind: str, by_token: bool, by_id: bool) -> tuple[Any, ...]:
    """The statements of :func:`_update_held` for one backend, kind of update and shape, built once."""
    held: list[ColumnElement[bool]] = []
    if by_token:
        held.append(tuple_(jobs.c.id, jobs.c.last_update_time).in_(bindparam("leases", expanding=True)))
    if by_id:
        held.append(jobs.c.id.in_(bindparam("any_claim", expanding=True)))
    running = jobs.c.status == int(JobStatus.RUNNING)
    guard = and_(running, jobs.c.id.in_(bindparam("ids", expanding=True)), or_(*held))
    values = _held_values(backend, kind)
    if backend is Backend.POSTGRESQL or backend is Backend.SQLITE:
        return (update(jobs).where(guard).values(**values).returning(jobs.c.id),)
    if backend is Backend.MYSQL:
        locked = select(jobs.c.id).where(guard).order_by(jobs.c.id).with_for_update()
        taken = jobs.c.id.in_(bindparam("taken", expanding=True))
        return (locked, update(jobs).where(taken).values(**values))
    assert_never(backend)


async def _update_held(
    conn: AsyncConnection,
    backend: Backend,
    kind: str,
    leases: Sequence[tuple[str, int | None]],
    params: Mapping[str, Any],
    values: Mapping[str, Any] | None = None,
) -> set[str]:
    """Update the jobs of ``leases`` (job id, lease token or None) that are still held; return their ids.

    A job is held when it is RUNNING and, if a token is given, under that claim::

        UPDATE jobs SET <kind's values>
        WHERE status = 1 AND id IN (:ids)
          AND ((id, last_update_time) IN ((:id, :token), …) OR id IN (:ids_without_token))
        RETURNING id                                    -- PostgreSQL, SQLite

    MySQL/MariaDB, which has no UPDATE … RETURNING: ``SELECT id … FOR UPDATE`` with
    that WHERE clause, then the UPDATE of the ids it locked. The plain ``id IN``
    lets every backend find the rows by primary key. The statements are built once
    per shape; ``values`` replaces some of the SET clause for this call only.
    """
    with_token = [(job_id, token) for job_id, token in leases if token is not None]
    any_claim = [job_id for job_id, token in leases if token is None]
    statements = _held_statements(backend, kind, bool(with_token), bool(any_claim))
    bound: dict[str, Any] = {**params, "ids": [job_id for job_id, _ in leases]}
    if with_token:
        bound["leases"] = with_token
    if any_claim:
        bound["any_claim"] = any_claim
    statement = statements[-1] if values is None else statements[-1].values(**values)
    if backend is Backend.POSTGRESQL or backend is Backend.SQLITE:
        return set((await conn.execute(statement, bound)).scalars().all())
    if backend is Backend.MYSQL:
        taken = list((await conn.execute(statements[0], bound)).scalars().all())
        if taken:
            await conn.execute(statement, {**bound, "taken": taken})
        return set(taken)
    assert_never(backend)


async def finish(conn: AsyncConnection, backend: Backend, items: Sequence[tuple[str, int | None, str]]) -> set[str]:
    """Mark the held jobs of ``items`` (job id, lease token or None, result) SUCCEEDED; return the ids finished.

    ``SET status = 2, result = :result, lease_expires_at = NULL, last_update_time =
    <now>`` through :func:`_update_held`. When every result is the same (no-op
    handlers, a status word) it is one bound value and the statement is built once;
    otherwise ``result`` is a ``CASE id WHEN … END`` of the results.
    """
    results = {result for _, _, result in items}
    if len(results) == 1:
        params, values = {"result": results.pop()}, None
    else:
        params, values = {}, {"result": case({job_id: result for job_id, _, result in items}, value=jobs.c.id)}
    return await _update_held(conn, backend, "finish", [(job_id, token) for job_id, token, _ in items], params, values)


async def heartbeat(conn: AsyncConnection, backend: Backend, leases: Sequence[tuple[str, int]], lease_ms: int) -> set[str]:
    """Extend the leases of the held jobs of ``leases`` (job id, token) to now + ``lease_ms``; the ids extended.

    ``SET lease_expires_at = <now> + :lease_ms`` through :func:`_update_held`.
    """
    return await _update_held(conn, backend, "heartbeat", leases, {"lease_ms": lease_ms})


# --- expired leases ------------------------------------------------------------------------


async def lock_expired(conn: AsyncConnection, backend: Backend, limit: int) -> list[Any]:
    """Lock and return up to ``limit`` RUNNING jobs whose lease has expired::

        SELECT id, retry_count, last_update_time, result FROM jobs
        WHERE status = 1 AND lease_expires_at <= <now_ms>
        ORDER BY id LIMIT :limit
        [FOR UPDATE SKIP LOCKED]   -- PostgreSQL, MySQL/MariaDB

    Sweepers on many hosts skip each other's rows, so each expired lease is handled
    once; a late heartbeat of the dead worker waits for the lock, then finds the job
    no longer RUNNING under its token. SQLite holds its write lock already.
    """
    query = (
        select(jobs.c.id, jobs.c.retry_count, jobs.c.last_update_time, jobs.c.result)
        .where(
            jobs.c.status == int(JobStatus.RUNNING),
            jobs.c.lease_expires_at.is_not(None),
            jobs.c.lease_expires_at <= now_ms(backend),
        )
        .order_by(jobs.c.id)
        .limit(limit)
    )
    if backend is Backend.POSTGRESQL or backend is Backend.MYSQL:
        query = query.with_for_update(skip_locked=True)
    elif backend is not Backend.SQLITE:
        assert_never(backend)
    return list((await conn.execute(query)).all())


# --- wake-ups ----------------------------------------------------------------------------------

NOTIFY_CHANNEL = "asyncstore_jobs"
"""The PostgreSQL channel on which a job's creation (or release) is announced; the
payload is the job's name, so an idle worker of that name claims it at once."""
_NOTIFY_NAMES_MAX = 16
"""More distinct names than this in one call are announced as one empty payload ("any")."""


async def notify(conn: AsyncConnection, backend: Backend, job_names: Sequence[str]) -> None:
    """Announce new claimable jobs: ``SELECT pg_notify('asyncstore_jobs', :name)`` per name.

    PostgreSQL delivers the notification when the transaction commits, so a worker
    never wakes for a job it cannot see yet. Other backends have no such channel:
    their workers poll (see :mod:`asyncstore.worker`).
    """
    if backend is not Backend.POSTGRESQL:
        return
    names = sorted(set(job_names))
    payloads = names if len(names) <= _NOTIFY_NAMES_MAX else [""]
    for payload in payloads:
        await conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, payload)))


# --- params matching -----------------------------------------------------------------------


def params_match_sql(backend: Backend, wanted: Mapping[str, Any]) -> list[ColumnElement[bool]]:
    """SQL conditions a job's params must meet to contain every pair of ``wanted``.

    ``params`` is stored as JSON text; the conditions narrow the rows in SQL and
    :func:`params_match` then confirms each row in Python, so the result is exact
    JSON equality per key (1 and 1.0 equal, true and 1 not) on every backend:

    * PostgreSQL: ``CAST(params AS JSONB) @> CAST(:wanted AS JSONB)``, containment of
      the whole filter document (exact for scalar values; for arrays and objects
      containment is looser than equality, hence the Python check).
    * MySQL/MariaDB: ``JSON_CONTAINS(params, :wanted)``, likewise (MySQL also lets a
      scalar match inside an array).
    * SQLite: per key, ``json_type(params, '$."key"')`` must be the value's JSON type
      and, for strings and numbers, ``json_extract(params, '$."key"') = :value``. A key
      that holds ``"`` or ``\\`` cannot be written as a JSON path: it is checked in
      Python only, as are integers beyond 64 bits.
    """
    if not wanted:
        return []
    if backend is Backend.POSTGRESQL:
        document = cast(bindparam(None, _dumps(wanted), type_=Text), JSONB)
        return [cast(jobs.c.params, JSONB).op("@>")(document)]
    if backend is Backend.MYSQL:
        return [func.json_contains(jobs.c.params, bindparam(None, _dumps(wanted), type_=Text)) == 1]
    if backend is Backend.SQLITE:
        return [cond for key, value in wanted.items() if (cond := _sqlite_key_match(key, value)) is not None]
    assert_never(backend)


def _sqlite_key_match(key: str, value: Any) -> ColumnElement[bool] | None:
    if '"' in key or "\\" in key:
        return None
    path = bindparam(None, f'$."{key}"', type_=Text)
    kind = func.json_type(jobs.c.params, path)
    extracted = func.json_extract(jobs.c.params, path)
    if value is None:
        return kind == "null"
    if isinstance(value, bool):
        return kind == ("true" if value else "false")
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            return None
        return and_(kind.in_(("integer", "real")), extracted == value)
    if isinstance(value, float):
        return and_(kind.in_(("integer", "real")), extracted == value)
    if isinstance(value, str):
        return and_(kind == "text", extracted == value)
    if isinstance(value, (list, tuple)):
        return kind == "array"
    return kind == "object"


def params_match(params: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Whether ``params`` holds every key of ``wanted`` with a JSON-equal value."""
    return all(key in params and json_equal(params[key], value) for key, value in wanted.items())


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), booleans apart from numbers, deep."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


# --- rows ------------------------------------------------------------------------------------


def to_job(row: Any) -> Job:
    """Build a :class:`Job` from a ``jobs`` row."""
    timeout = row.timeout
    return Job(
        job_id=row.id,
        job_name=row.job_name,
        params=json.loads(row.params),
        timeout=None if timeout is None or math.isnan(timeout) else float(timeout),
        status=JobStatus(row.status),
        result=row.result,
        retry_count=int(row.retry_count),
        creation_time=int(row.creation_time),
        last_update_time=int(row.last_update_time),
        lease_expires_at=None if row.lease_expires_at is None else int(row.lease_expires_at),
        next_attempt_at=None if row.next_attempt_at is None else int(row.next_attempt_at),
    )
