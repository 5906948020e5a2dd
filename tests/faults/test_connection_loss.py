"""A server session killed mid-transaction, and idle pooled connections dropped.

The victim learns its session id inside the transaction, an admin connection kills
it (``pg_terminate_backend`` / ``KILL CONNECTION``), and the victim's next round trip
fails. The promises: the write is all there or all absent, the caller sees either
success (after a safe retry) or TEMPORARILY_UNAVAILABLE, and the next call on the
same store works.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import AsyncStore, TemporarilyUnavailable
from asyncstore.driver import greenlet_await
from asyncstore.schema import experiment_tags, experiments
from tests.faults import admin
from tests.helpers import count_rows, mysql_only, needs_server, transaction_retries

ROWS = 40


def _experiment_rows(prefix: str) -> list[dict[str, object]]:
    now = int(time.time() * 1000)
    return [{"name": f"{prefix}-{i}", "creation_time": now, "last_update_time": now} for i in range(ROWS)]


async def _insert_batch(conn: AsyncConnection, prefix: str) -> None:
    """One batch: ROWS experiments and one tag each (two multi-row statements)."""
    await conn.execute(insert(experiments), _experiment_rows(prefix))
    ids = (await conn.execute(select(experiments.c.experiment_id).where(experiments.c.name.like(f"{prefix}-%")))).scalars()
    await conn.execute(insert(experiment_tags), [{"experiment_id": i, "key": "k", "value": "v"} for i in ids])


async def _kill_me(conn: AsyncConnection, uri: str) -> None:
    session_id = await conn.scalar(text(admin.SESSION_ID_SQL[admin.backend_of(uri)]))
    await admin.kill_session(uri, int(session_id))


async def _batch_count(store: AsyncStore, prefix: str) -> tuple[int, int]:
    exps = await count_rows(store, experiments, experiments.c.name.like(f"{prefix}-%"))
    tags = await count_rows(
        store,
        experiment_tags,
        experiment_tags.c.experiment_id.in_(
            select(experiments.c.experiment_id).where(experiments.c.name.like(f"{prefix}-%"))
        ),
    )
    return exps, tags


@needs_server
async def test_killed_between_statements_is_retried_once_and_written_once(store: AsyncStore) -> None:
    """Promise: a session killed after the first statement of a batch, before COMMIT, is
    retried by ``uow.run`` on a fresh connection; the caller sees success and the batch
    is in the database exactly once (the killed attempt left nothing)."""
    attempts = 0

    async def work(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(insert(experiments), _experiment_rows("first"))
        if attempts == 1:
            await _kill_me(conn, store.config.uri)
        await conn.execute(insert(experiments), _experiment_rows("second"))

    await store.uow.run(work)
    assert attempts == 2
    assert await count_rows(store, experiments, experiments.c.name.like("first-%")) == ROWS
    assert await count_rows(store, experiments, experiments.c.name.like("second-%")) == ROWS
    assert store.engine.sync_engine.pool.checkedout() == 0


@needs_server
async def test_killed_without_retry_leaves_nothing_and_next_call_works(store: AsyncStore) -> None:
    """Promise: with the no-retry form (``uow.transaction``), a killed session surfaces as
    TEMPORARILY_UNAVAILABLE, none of the batch's rows exist, and the next call on the
    same store succeeds (the pool discarded the dead connection)."""
    with pytest.raises(TemporarilyUnavailable):
        async with store.uow.transaction() as conn:
            await _insert_batch(conn, "lost")
            await _kill_me(conn, store.config.uri)
            await conn.execute(insert(experiments), _experiment_rows("after-kill"))
    assert await _batch_count(store, "lost") == (0, 0)
    assert store.engine.sync_engine.pool.checkedout() == 0
    await store.uow.run(lambda conn: _insert_batch(conn, "next"))
    assert await _batch_count(store, "next") == (ROWS, ROWS)


@needs_server
async def test_killed_before_commit_is_not_retried_unless_idempotent(store: AsyncStore) -> None:
    """Promise: a session killed after the last statement fails at COMMIT, where the
    outcome is unknown to the client: a non-idempotent call gets TEMPORARILY_UNAVAILABLE
    and its batch is fully absent (the server rolled it back); an idempotent call is
    retried and its batch is there exactly once."""

    async def killed_at_commit(conn: AsyncConnection) -> None:
        await _insert_batch(conn, "commit-lost")
        await _kill_me(conn, store.config.uri)

    with pytest.raises(TemporarilyUnavailable):
        await store.uow.run(killed_at_commit)
    assert await _batch_count(store, "commit-lost") == (0, 0)

    attempts = 0

    async def idempotent(conn: AsyncConnection) -> None:
        nonlocal attempts
        attempts += 1
        await conn.execute(experiments.delete().where(experiments.c.name.like("again-%")))
        await _insert_batch(conn, "again")
        if attempts == 1:
            await _kill_me(conn, store.config.uri)

    await store.uow.run(idempotent, idempotent=True)
    assert attempts == 2
    assert await _batch_count(store, "again") == (ROWS, ROWS)
    assert store.engine.sync_engine.pool.checkedout() == 0


@needs_server
@pytest.mark.parametrize("pre_ping", [True, False], ids=["pre_ping", "no_pre_ping"])
async def test_idle_pooled_connections_dropped_by_server(migrated_uri: str, pre_ping: bool) -> None:
    """Promise: when the server drops every idle pooled connection between two calls,
    the next calls succeed without the caller noticing: with pre-ping the pool replaces
    the dead connections at checkout; without it ``uow.run`` retries on a fresh one."""
    async with AsyncStore.open(migrated_uri, pool_size=4, pool_pre_ping=pre_ping) as store:
        await asyncio.gather(*(store.uow.run(lambda c, p=f"warm{i}": _insert_batch(c, p)) for i in range(4)))
        assert store.engine.sync_engine.pool.checkedin() >= 2
        killed = await admin.kill_all_sessions(migrated_uri)
        assert killed >= 2
        results = await asyncio.gather(
            *(store.uow.run(lambda c, p=f"after{i}": _insert_batch(c, p)) for i in range(4))
        )
        assert results == [None] * 4
        for i in range(4):
            assert await _batch_count(store, f"after{i}") == (ROWS, ROWS)


@mysql_only
@pytest.mark.slow
async def test_mariadb_wait_timeout_drops_idle_connections(migrated_uri: str) -> None:
    """Promise: MariaDB closes connections idle longer than ``wait_timeout`` (here a
    session value of 1 s, set on the test's connections only); after such an idle
    period the next call succeeds without the caller noticing, and writes once."""
    async with AsyncStore.open(migrated_uri, pool_size=2) as store:

        @event.listens_for(store.engine.sync_engine, "connect")
        def _short_wait_timeout(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("SET SESSION wait_timeout = 1")
            cursor.close()

        await store.engine.dispose()  # the pool reconnects with the listener in place
        await store.uow.run(lambda c: _insert_batch(c, "before-idle"))
        before = await admin.sessions(migrated_uri)
        assert before >= 1
        await asyncio.sleep(2.5)  # longer than wait_timeout: the server closed them
        assert await admin.sessions(migrated_uri) == 0
        await store.uow.run(lambda c: _insert_batch(c, "after-idle"))
        assert await _batch_count(store, "before-idle") == (ROWS, ROWS)
        assert await _batch_count(store, "after-idle") == (ROWS, ROWS)


@needs_server
@pytest.mark.parametrize("write", [False, True], ids=["read", "write"])
async def test_killed_while_being_set_up_is_replaced(migrated_uri: str, write: bool) -> None:
    """Promise: a new connection that the server kills after the connect succeeded,
    while SQLAlchemy sets it up (before the call has it), is replaced by a retry, for
    a write too (nothing of the call was sent yet); the connect itself is not retried
    a second time."""
    async with AsyncStore.open(migrated_uri, pool_size=1, max_overflow=0) as store:
        killed: list[int] = []

        def kill_the_first(dbapi_connection: Any, record: Any) -> None:
            if killed:
                return
            cursor = dbapi_connection.cursor()
            cursor.execute(admin.SESSION_ID_SQL[store.backend])
            killed.append(int(cursor.fetchone()[0]))
            greenlet_await(admin.kill_session(migrated_uri, killed[0]))
            cursor.execute("SELECT 1")  # the set-up's next round trip meets the dead connection

        event.listen(store.engine.sync_engine, "connect", kill_the_first)
        await store.engine.dispose()  # the next call connects anew
        with transaction_retries() as retries:
            if write:
                exp = await store.experiments.create("set-up")
            else:
                exp = None
                assert (await store.experiments.search()).items == []
        assert killed and len(retries) == 1
        if exp is not None:
            assert (await store.experiments.get(exp)).name == "set-up"
