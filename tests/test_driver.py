"""The store's straight-to-driver path: its statements logged by ``echo`` on every backend,
and LOAD DATA's feeding threads under concurrency."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from typing import Any

from asyncstore import AsyncStore, InternalError
from asyncstore.bulk import BULK_MIN
from asyncstore.driver import Driver
from asyncstore.schema import spans, trace_info
from asyncstore.sqlite_dbapi import OneTripConnection
from tests.helpers import count_rows, make_experiment, make_span, mysql_only, new_trace_id, sqlite_only


async def test_echo_logs_the_statements_sent_to_the_driver(migrated_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    """``echo=True`` logs every span-ingestion statement with its parameters, COPY,
    LOAD DATA and SQLite's executemany included, on SQLAlchemy's engine logger."""
    async with AsyncStore.open(migrated_uri, echo=True) as store:
        exp = await make_experiment(store)
        tid = new_trace_id()
        batch = [make_span(tid, name=f"s{i}") for i in range(BULK_MIN)]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            assert await store.spans.log_spans(exp, batch) == BULK_MIN
        logged = [r.getMessage().strip() for r in caplog.records if r.name.startswith("sqlalchemy.engine")]
        backend = store.backend
    statements = [m for m in logged if m.startswith(("INSERT", "SELECT", "COPY", "LOAD", "SAVEPOINT", "RELEASE"))]
    assert sum(s.startswith("INSERT INTO trace_info") for s in statements) == 1, logged
    # one lookup: the experiment's artifact location and any trace id owned by another experiment
    assert sum(s.startswith("SELECT e.artifact_location, f.request_id") for s in statements) == 1, logged
    # The bulk path of the servers, under its savepoint, with the number of rows it carries.
    bulk = {
        "postgresql": ("COPY spans", "asyncstore_load_spans", f"{{'records': {BULK_MIN}}}"),
        "mysql": ("LOAD DATA LOCAL INFILE '<stream>' REPLACE", "asyncstore_load_spans", f"{{'rows': {BULK_MIN}}}"),
    }
    if backend in bulk:
        statement, savepoint, parameters = bulk[backend]
        steps = [s for s in statements if s.startswith(("COPY", "LOAD", "SAVEPOINT", "RELEASE"))]
        assert [s.split(" (")[0].split(" INTO ")[0] for s in steps] == [
            f"SAVEPOINT {savepoint}", statement, f"RELEASE SAVEPOINT {savepoint}",
        ], logged
        assert f"[raw driver call] {parameters}" in logged, logged
    else:
        assert sum(s.startswith("INSERT INTO spans") for s in statements) == 1, logged
    if backend == "sqlite":
        # The executemany of the spans is logged with its rows, as SQLAlchemy logs its own.
        assert any(m.startswith("[raw driver call] [") and tid in m for m in logged), logged


@mysql_only
async def test_more_concurrent_loads_than_the_default_executor_has_threads(migrated_uri: str) -> None:
    """Each LOAD DATA's rows are fed to the pipe by a thread of its own: aiomysql reads the
    pipe in the loop's default executor, so feeders in that executor too would take all
    its threads, each waiting for a read that then never runs (the process hangs)."""
    threads = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    loads = threads + 2
    async with AsyncStore.open(migrated_uri, pool_size=loads, max_overflow=0) as store:
        exp = await make_experiment(store)
        batches = [[make_span(new_trace_id(), name=f"s{i}") for i in range(BULK_MIN * 5)] for _ in range(loads)]
        written = await asyncio.wait_for(
            asyncio.gather(*(store.spans.log_spans(exp, batch) for batch in batches)), timeout=120
        )
    assert written == [BULK_MIN * 5] * loads


def _count_trips(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every trip into aiosqlite's thread from now on: the first words of the statements it carried."""
    trips: list[list[str]] = []
    trip = OneTripConnection.trip

    async def counted(self: OneTripConnection, many: bool, operation: str, parameters: Any, before: Any = ()) -> Any:
        trips.append([" ".join(s.split()[:3]) for s, _ in [*before, (operation, None)]])
        return await trip(self, many, operation, parameters, before)

    monkeypatch.setattr(OneTripConnection, "trip", counted)
    return trips


@sqlite_only
async def test_sqlite_log_spans_writes_in_two_trips(migrated_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each trip into aiosqlite's thread waits for the thread and then for the event loop
    while the write lock is held: log_spans sends the trace upsert with its lookup, and
    the tags with the spans (Driver.defer), two trips where there were four."""
    async with AsyncStore.open(migrated_uri) as store:
        exp = await make_experiment(store)
        trips = _count_trips(monkeypatch)
        tid = new_trace_id()
        assert await store.spans.log_spans(exp, [make_span(tid, name=f"s{i}") for i in range(3)]) == 3
        assert trips == [
            ["INSERT INTO trace_info", "SELECT e.artifact_location, f.request_id,"],
            ["INSERT INTO trace_tags", "INSERT INTO spans"],
        ]
        assert len(await store.spans.get_spans(tid)) == 3


@sqlite_only
async def test_a_deferred_write_that_fails_fails_its_transaction(migrated_uri: str) -> None:
    """A deferred write raises from the call whose trip carried it; the transaction then
    rolls back everything, the deferred writes sent before it included."""
    async with AsyncStore.open(migrated_uri) as store:
        exp = await make_experiment(store)
        tid = new_trace_id()

        async def work(conn: Any) -> None:
            db = await Driver.of(conn)
            db.defer(
                "INSERT INTO trace_info (request_id, experiment_id, timestamp_ms, status) VALUES (?, ?, ?, ?)",
                [(tid, exp, 1, "OK")],
            )
            db.defer("INSERT INTO no_such_table VALUES (?)", [(1,)])
            await db.flush()

        with pytest.raises(InternalError, match="no such table: no_such_table"):
            await store.uow.run(work, write=True)
        assert await count_rows(store, trace_info, trace_info.c.request_id == tid) == 0

        async def deferred_then_read(conn: Any) -> list[tuple[Any, ...]]:
            db = await Driver.of(conn)
            db.defer(
                "INSERT INTO trace_info (request_id, experiment_id, timestamp_ms, status) VALUES (?, ?, ?, ?)",
                [(tid, exp, 1, "OK")],
            )
            return await db.fetchall("SELECT count(*) FROM trace_info WHERE request_id = ?", [tid])

        assert await store.uow.run(deferred_then_read, write=True) == [(1,)]  # sent before the read, in order
        assert await count_rows(store, spans, spans.c.trace_id == tid) == 0
