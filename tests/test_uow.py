"""The unit of work: commit/rollback, error translation, retries, pool limits, cancellation."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy import event, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.engine import make_url

from asyncstore import (
    AlreadyExists,
    AsyncStore,
    ErrorCode,
    InternalError,
    InvalidParameter,
    NotFound,
    SchemaOutOfDate,
    StoreError,
    TemporarilyUnavailable,
    get_engine,
)
from asyncstore.schema import experiment_tags, experiments
from asyncstore.uow import UnitOfWork
from tests.faults import admin
from tests.helpers import count_rows, needs_server, read_calls, sqlite_only


def _experiment(name: str | None = None, **values: Any) -> Any:
    return insert(experiments).values(name=name if name is not None else uuid.uuid4().hex, **values)


async def _count(store: AsyncStore) -> int:
    return await count_rows(store, experiments)


async def _fails_with(store: AsyncStore, statement: Any, **kwargs: Any) -> StoreError:
    async def fn(conn: AsyncConnection) -> None:
        await conn.execute(statement)

    with pytest.raises(StoreError) as info:
        await store.uow.run(fn, **kwargs)
    err = info.value
    # The driver's exception is chained, wrapped once by SQLAlchemy, never raised bare.
    assert isinstance(err.__cause__, sa_exc.DBAPIError) and err.__cause__.orig is not None
    return err


# --- commit, rollback and translation ---------------------------------------------------


async def test_commit_on_success_and_rollback_on_any_error(store: AsyncStore) -> None:
    await store.uow.run(lambda c: c.execute(_experiment("kept")))

    async def half_then_fail(conn: AsyncConnection) -> None:
        await conn.execute(_experiment("rolled-back"))
        raise RuntimeError("boom")

    # Not a database error: rolled back; a StoreError raised on purpose inside fn stays
    # itself, and a bug reaches the caller as INTERNAL saying it is one (not as a
    # database failure), with the original exception as its cause.
    with pytest.raises(InternalError, match=r"unexpected error inside asyncstore \(RuntimeError: boom\); this is a bug") as info:
        await store.uow.run(half_then_fail)
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(NotFound, match="on purpose"):
        async with store.uow.transaction() as conn:
            await conn.execute(_experiment("rolled-back-too"))
            raise NotFound("on purpose")
    with pytest.raises(InternalError, match=r"\(KeyError: 'x'\)") as info:  # the no-retry form behaves the same
        async with store.uow.transaction() as conn:
            await conn.execute(_experiment("also-rolled-back"))
            raise KeyError("x")
    assert isinstance(info.value.__cause__, KeyError)
    names = await store.uow.run(lambda c: c.scalars(select(experiments.c.name)), write=False)
    assert list(names) == ["kept"]


async def test_unique_violation_is_already_exists(store: AsyncStore) -> None:
    await store.uow.run(lambda c: c.execute(_experiment("dup")))
    err = await _fails_with(store, _experiment("dup"), messages={ErrorCode.ALREADY_EXISTS: "experiment 'dup' exists"})
    assert isinstance(err, AlreadyExists) and (err.code, err.http_status) == (ErrorCode.ALREADY_EXISTS, 409)
    assert err.message.startswith("experiment 'dup' exists")


async def test_foreign_key_violation_is_not_found(store: AsyncStore) -> None:
    err = await _fails_with(store, insert(experiment_tags).values(key="k", value="v", experiment_id=987654))
    assert isinstance(err, NotFound) and err.http_status == 404


async def test_not_null_and_check_violations_are_invalid_parameter(store: AsyncStore) -> None:
    null_name = await _fails_with(store, insert(experiments).values(name=None))
    bad_stage = await _fails_with(store, _experiment(lifecycle_stage="bogus"))
    assert isinstance(null_name, InvalidParameter) and isinstance(bad_stage, InvalidParameter)
    assert null_name.http_status == 400
    assert await _count(store) == 0


@needs_server
async def test_too_long_value_is_invalid_parameter(store: AsyncStore) -> None:
    err = await _fails_with(store, _experiment("x" * 501))
    assert isinstance(err, InvalidParameter)


@sqlite_only
async def test_sqlite_does_not_enforce_varchar_length(store: AsyncStore) -> None:
    # Documented SQLite behaviour: the repositories validate limits before writing.
    await store.uow.run(lambda c: c.execute(_experiment("x" * 501)))
    assert await _count(store) == 1


async def test_missing_table(store: AsyncStore) -> None:
    async def drop_and_read(conn: AsyncConnection) -> None:
        await conn.execute(text("DROP TABLE experiment_tags"))

    await store.uow.run(drop_and_read)
    err = await _fails_with(store, select(experiment_tags.c.key), write=False)
    if store.backend.value == "sqlite":
        # SQLite reports a missing table as the generic SQLITE_ERROR: nothing structured to go on.
        assert isinstance(err, InternalError) and "SQLITE_ERROR" in err.message
    else:
        assert isinstance(err, SchemaOutOfDate) and "asyncstore db upgrade" in err.message


# --- transient failures and retry -------------------------------------------------------


@needs_server
@pytest.mark.parametrize("retries", [0, 2])
async def test_deadlock_is_retried_then_temporarily_unavailable(migrated_uri: str, retries: int) -> None:
    engine = get_engine(migrated_uri, transaction_retries=retries)
    uow = UnitOfWork(engine)
    ids = await uow.run(lambda c: _two_experiments(c))
    attempts = {"a": 0, "b": 0}
    holding = {"a": asyncio.Event(), "b": asyncio.Event()}

    def crossing(me: str, other: str, first: int, second: int) -> Any:
        async def fn(conn: AsyncConnection) -> None:
            attempts[me] += 1
            await conn.execute(update(experiments).where(experiments.c.experiment_id == first)
                               .values(last_update_time=experiments.c.last_update_time + 1))
            if attempts[me] == 1:  # first attempt: each holds one row and wants the other's
                holding[me].set()
                await holding[other].wait()
            await conn.execute(update(experiments).where(experiments.c.experiment_id == second)
                               .values(last_update_time=experiments.c.last_update_time + 1))

        return fn

    results = await asyncio.wait_for(
        asyncio.gather(
            uow.run(crossing("a", "b", ids[0], ids[1])),
            uow.run(crossing("b", "a", ids[1], ids[0])),
            return_exceptions=True,
        ),
        timeout=60,
    )
    totals = await uow.run(
        lambda c: c.scalars(select(experiments.c.last_update_time).order_by(experiments.c.experiment_id)),
        write=False,
    )
    if retries == 0:
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], TemporarilyUnavailable)
        assert errors[0].http_status == 503 and isinstance(errors[0].__cause__, sa_exc.DBAPIError)
        assert sorted(attempts.values()) == [1, 1] and list(totals) == [1, 1]  # the victim rolled back
    else:
        assert results == [None, None]
        assert sorted(attempts.values()) == [1, 2]  # the deadlock victim ran again and won
        assert list(totals) == [2, 2]


async def _two_experiments(conn: AsyncConnection) -> list[int]:
    ids = []
    for name in ("first", "second"):
        result = await conn.execute(_experiment(name, last_update_time=0))
        ids.append(int(result.inserted_primary_key[0]))
    return ids


@sqlite_only
async def test_sqlite_busy_is_retried_then_temporarily_unavailable(
    migrated_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_url(migrated_uri).database or ""
    other = sqlite3.connect(path, isolation_level=None)  # another process's writer
    engine = get_engine(migrated_uri, sqlite_busy_timeout_ms=20, transaction_retries=2)
    uow = UnitOfWork(engine)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(TemporarilyUnavailable) as info:
            await uow.run(lambda c: c.execute(_experiment("blocked")))
        assert getattr(info.value.__cause__, "orig", None) is not None

        class ReleaseOnRetry(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "retry" in record.getMessage() and other.in_transaction:
                    other.execute("ROLLBACK")  # the other writer finishes while we back off

        handler = ReleaseOnRetry()
        logging.getLogger("asyncstore.uow").addHandler(handler)
        try:
            with caplog.at_level(logging.INFO, logger="asyncstore.uow"):
                await uow.run(lambda c: c.execute(_experiment("after-retry")))
        finally:
            logging.getLogger("asyncstore.uow").removeHandler(handler)
        assert [r.args[1] for r in caplog.records if "retry" in r.getMessage()][-1] == 1  # type: ignore[index]
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
    names = await uow.run(lambda c: c.scalars(select(experiments.c.name)), write=False)
    assert list(names) == ["after-retry"]


@needs_server
@pytest.mark.parametrize("pre_ping", [True, False])
async def test_pooled_connection_killed_by_the_server(
    migrated_uri: str, backend: str, pre_ping: bool, caplog: pytest.LogCaptureFixture
) -> None:
    engine = get_engine(migrated_uri, pool_size=1, max_overflow=0, pool_pre_ping=pre_ping)
    uow = UnitOfWork(engine)
    own_id = "SELECT pg_backend_pid()" if backend == "postgresql" else "SELECT CONNECTION_ID()"
    victim = await uow.run(lambda c: c.scalar(text(own_id)), write=False)
    killer = get_engine(migrated_uri, poolclass="NullPool")
    kill = "SELECT pg_terminate_backend(:id)" if backend == "postgresql" else "KILL :id"
    await UnitOfWork(killer).run(lambda c: c.execute(text(kill), {"id": victim}))
    await admin.wait_session_gone(migrated_uri, victim)  # the server has closed it
    with caplog.at_level(logging.INFO, logger="asyncstore.uow"):
        replacement = await uow.run(lambda c: c.scalar(text(own_id)), write=False)
    assert replacement != victim
    retried = [r for r in caplog.records if "retry" in r.getMessage()]
    # With pre-ping the dead connection is replaced at checkout; without, the first
    # statement fails and the transaction is run again on a fresh connection.
    assert len(retried) == (0 if pre_ping else 1)


async def test_pool_exhaustion_is_temporarily_unavailable_promptly(migrated_uri: str) -> None:
    engine = get_engine(migrated_uri, pool_size=1, max_overflow=0, pool_timeout=0.2)
    uow = UnitOfWork(engine)
    async with uow.transaction(write=False):
        with pytest.raises(TemporarilyUnavailable, match="pool_timeout") as info:
            await asyncio.wait_for(uow.run(lambda c: c.scalar(text("SELECT 1")), write=False), timeout=20)
    assert isinstance(info.value.__cause__, sa_exc.TimeoutError)
    assert await uow.run(lambda c: c.scalar(text("SELECT 1")), write=False) == 1


@sqlite_only
async def test_sqlite_writer_waiting_for_the_write_lock_times_out(migrated_uri: str) -> None:
    uow = UnitOfWork(get_engine(migrated_uri, pool_timeout=0.2))
    async with uow.transaction(write=True) as conn:
        await conn.execute(_experiment("holder"))
        with pytest.raises(TemporarilyUnavailable, match="write lock"):
            await asyncio.wait_for(uow.run(lambda c: c.execute(_experiment("waiter"))), timeout=20)
    assert await uow.run(lambda c: c.scalar(select(func.count()).select_from(experiments)), write=False) == 1


# --- cancellation --------------------------------------------------------------------------


async def test_cancelled_tasks_leave_no_connection_and_no_rows(store: AsyncStore) -> None:
    server = store.backend.value != "sqlite"
    in_transaction = 0
    enough = asyncio.Event()
    # SQLite runs one writer at a time; a server runs as many as the pool holds (10 + 10).
    wanted = 20 if server else 1
    sleep_in_db = {"postgresql": "SELECT pg_sleep(2)", "mysql": "SELECT SLEEP(2)"}.get(store.backend.value)

    def body(i: int) -> Any:
        async def fn(conn: AsyncConnection) -> None:
            nonlocal in_transaction
            await conn.execute(_experiment(f"cancelled-{i}"))
            in_transaction += 1
            if in_transaction >= wanted:
                enough.set()
            if sleep_in_db and i % 2:
                await conn.execute(text(sleep_in_db))  # cancelled in the middle of a round trip
            await asyncio.sleep(3600)  # cancelled between statements

        return fn

    tasks = [asyncio.create_task(store.uow.run(body(i))) for i in range(100)]
    await asyncio.wait_for(enough.wait(), timeout=30)
    for wave in range(10):  # cancel the rest at different stages: waiting, connecting, writing
        for task in tasks[wave::10]:
            task.cancel()
        await asyncio.sleep(0.002)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert store.engine.sync_engine.pool.checkedout() == 0
    assert await _count(store) == 0
    await store.uow.run(lambda c: c.execute(_experiment("afterwards")))
    assert await _count(store) == 1
    assert store.engine.sync_engine.pool.checkedout() == 0


async def test_read_only_calls_send_nothing_but_reads(store: AsyncStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A call the unit of work runs with ``write=False`` is retried even when its COMMIT
    failed, which is safe only because it changes nothing: every statement of every
    read-only call is a SELECT (or the transaction's own BEGIN on SQLite)."""
    reads = await read_calls(store)
    writing: dict[int, bool] = {}
    begin = UnitOfWork._begin

    async def recording_begin(self: UnitOfWork, conn: AsyncConnection, write: bool) -> None:
        writing[id(conn.sync_connection)] = write
        await begin(self, conn, write)

    monkeypatch.setattr(UnitOfWork, "_begin", recording_begin)
    sent: list[tuple[str, str]] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if writing.get(id(conn)) is False:
            sent.append((current, statement.lstrip().split(None, 1)[0].upper()))

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        for current, read in reads.items():
            await read()
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)
    assert {name for name, _ in sent} == set(reads)  # every call ran in a read-only transaction
    assert {verb for _, verb in sent} <= {"SELECT", "WITH", "BEGIN"}, sent
