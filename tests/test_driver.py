"""The store's straight-to-driver path: its statements logged by ``echo`` on every backend,
and LOAD DATA's feeding threads under concurrency."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from asyncstore import AsyncStore
from asyncstore.bulk import BULK_MIN
from tests.helpers import make_experiment, make_span, mysql_only, new_trace_id


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
