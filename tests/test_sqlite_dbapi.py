"""SQLite's adapter (asyncstore.sqlite_dbapi): trips into aiosqlite's thread per call,
a held-back BEGIN that still begins the transaction its first statement runs in, and
executemany of a one-row INSERT sent as multi-row statements."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import AsyncStore, InternalError, Metric
from asyncstore.driver import Driver
from asyncstore.schema import experiments
from asyncstore.sqlite_dbapi import _run
from tests.helpers import make_experiment, sqlite_only


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every call made on an aiosqlite connection's thread, in order."""
    made: list[Any] = []
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        made.append(fn)
        return await execute(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    yield made


@sqlite_only
async def test_a_read_and_a_write_take_one_trip_per_statement_and_one_to_commit(
    migrated_uri: str, trips: list[Any]
) -> None:
    """get_run: its two SELECTs (the first carrying the BEGIN) and COMMIT. log_batch of
    100 metrics: lock the run, the metrics, the latest metrics, COMMIT."""
    async with AsyncStore.open(migrated_uri) as store:
        exp = await make_experiment(store)
        run = await store.runs.create(exp)
        await store.runs.get(run.info.run_id)  # the pool's connection is set up
        trips.clear()
        await store.runs.get(run.info.run_id)
        assert len(trips) == 3, trips
        trips.clear()
        await store.runs.log_batch(run.info.run_id, metrics=[Metric("m", 1.0, 1, i) for i in range(100)])
        assert len(trips) == 4, trips
        assert len((await store.runs.get(run.info.run_id)).data.metrics) == 1


@sqlite_only
async def test_a_transaction_without_a_statement_makes_no_trip(migrated_uri: str, trips: list[Any]) -> None:
    async def nothing(conn: AsyncConnection) -> int:
        return 7

    async with AsyncStore.open(migrated_uri) as store:
        await store.uow.run(nothing, write=False)  # the pool's connection is set up
        trips.clear()
        assert await store.uow.run(nothing, write=False) == 7
        assert await store.uow.run(nothing) == 7
        assert trips == []


@sqlite_only
async def test_a_held_back_begin_still_holds_the_first_statement_and_a_driver_call(migrated_uri: str) -> None:
    """Rows written by a SQLAlchemy statement and by a driver call in one transaction
    are both undone by its rollback; a write transaction holds the write lock from its
    first statement, so a second writer cannot begin beside it."""

    async def insert_both_then_fail(conn: AsyncConnection) -> None:
        await conn.execute(insert(experiments).values(name="by-sqlalchemy"))
        driver = await Driver.of(conn)
        assert driver.in_transaction
        await driver.execute("INSERT INTO experiments (name, lifecycle_stage) VALUES ('by-driver', 'active')")
        assert await conn.scalar(select(func.count()).select_from(experiments)) == 2
        raise RuntimeError("undo")

    async def driver_first(conn: AsyncConnection) -> int:
        driver = await Driver.of(conn)
        assert driver.in_transaction  # the BEGIN is held back, and counts
        await driver.execute("INSERT INTO experiments (name, lifecycle_stage) VALUES ('first', 'active')")
        return len(await driver.fetchall("SELECT name FROM experiments"))

    async with AsyncStore.open(migrated_uri) as store:
        with pytest.raises(InternalError, match="undo"):
            await store.uow.run(insert_both_then_fail)
        assert await store.uow.run(
            lambda conn: conn.scalar(select(func.count()).select_from(experiments)), write=False
        ) == 0
        assert await store.uow.run(driver_first) == 1

        async with store.engine.connect() as holder:
            await holder.execution_options(asyncstore_sqlite_begin="IMMEDIATE")
            await holder.begin()
            await holder.execute(text("SELECT 1"))  # the write lock is taken with it
            async with store.engine.connect() as other:
                await other.exec_driver_sql("PRAGMA busy_timeout = 0")  # fail at once, not after waiting
                await other.rollback()
                await other.execution_options(asyncstore_sqlite_begin="IMMEDIATE")
                await other.begin()
                with pytest.raises(Exception, match="database is locked"):
                    await other.execute(text("SELECT 1"))
                await other.rollback()
                await other.invalidate()  # not back to the pool with its busy timeout of 0
            await holder.rollback()


def _table(rows: int = 0) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL, n INTEGER NOT NULL DEFAULT 0)")
    return conn


UPSERT = "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1"


def test_executemany_of_a_one_row_insert_is_sent_as_few_multi_row_statements() -> None:
    """2,000 rows go in one statement (as many as SQLite's variable limit allows), and
    an upsert sees the earlier rows of its own statement, as executemany's rows do."""
    conn = _table()
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    rows = [(f"k{i % 1500}", i) for i in range(2000)]
    _, _, rowcount, _ = _run(conn, None, True, UPSERT, rows)
    assert len(sent) == 1 and sent[0].count("('k") == 2000, sent[0][:200]
    assert rowcount == 2000
    assert conn.execute("SELECT count(*), sum(n), sum(v) FROM t").fetchone() == (1500, 500, sum(range(500, 2000)))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3's setlimit is new in Python 3.11")
def test_multi_row_statements_hold_no_more_variables_than_the_connection_allows() -> None:
    conn = _table()
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 7)  # 3 rows of 2 per statement
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    _, _, rowcount, _ = _run(conn, None, True, UPSERT, [(f"k{i}", i) for i in range(8)])
    assert [s.count("('k") for s in sent] == [3, 3, 2]
    assert rowcount == 8
    assert conn.execute("SELECT group_concat(v) FROM t ORDER BY k").fetchone() == ("0,1,2,3,4,5,6,7",)


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO t (k, v) VALUES (?, ?) RETURNING k",  # executemany returns no rows: keep it so
        "INSERT INTO t (k, v, n) VALUES (?, ?, 5)",  # not placeholders only
        "UPDATE t SET v = ? WHERE k = ?",
    ],
)
def test_other_statements_are_left_to_executemany(statement: str) -> None:
    conn = _table()
    conn.executemany("INSERT INTO t (k, v) VALUES (?, ?)", [("a", 0), ("b", 0)])
    sent: list[str] = []
    conn.set_trace_callback(sent.append)
    rows = [(1, "a"), (2, "b")] if statement.startswith("UPDATE") else [("c", 1), ("d", 2)]
    _, returned, _, _ = _run(conn, None, True, statement, rows)
    assert len(sent) == 2, sent  # one execution per row
    assert returned == []
    expected = [("a", 1), ("b", 2)] if statement.startswith("UPDATE") else [("a", 0), ("b", 0), ("c", 1), ("d", 2)]
    assert conn.execute("SELECT k, v FROM t ORDER BY k").fetchall() == expected
