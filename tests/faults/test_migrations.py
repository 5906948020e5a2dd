"""Migrations interrupted: the upgrading process killed half-way through.

Run on PostgreSQL and SQLite, whose DDL is transactional: each revision (PostgreSQL)
or the whole upgrade (SQLite) commits as one, so a kill can only ever leave whole
revisions behind. MySQL/MariaDB commit every DDL statement on its own, so a kill in
the middle of a revision leaves its first tables without the revision being recorded
and the next upgrade fails ("Table 'experiments' already exists", "Duplicate column
name 'lease_expires_at'"): the same cases fail there at every kill point. That is a
limit of MySQL, reported rather than tested here; recovering needs a manual repair.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, insert
from sqlalchemy.engine import Connection

from asyncstore import AsyncStore, migrate
from asyncstore.config import StoreConfig
from asyncstore.engines import create_engine
from asyncstore.schema import experiments, metadata
from tests.helpers import count_rows, needs_transactional_ddl

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD = 120  # seconds: only there so that a hang fails the test instead of CI
ALL_TABLES = frozenset(metadata.tables)
TABLES_BEFORE_0003 = ALL_TABLES - {"entity_associations"}
REVISION_0002_COLUMNS = {"lease_expires_at", "next_attempt_at"}

KILL_POINTS = {
    "mid-0001": r"CREATE TABLE runs",
    "0001-version-stamped": r"INSERT INTO alembic_version",
    "mid-0002": r"ALTER TABLE jobs ADD COLUMN lease_expires_at|DROP TABLE jobs",
    "0002-version-stamped": r"UPDATE alembic_version SET version_num='0002",
    "mid-0003": r"CREATE TABLE entity_associations",
}


async def _spawn(uri: str, pattern: str | None = None) -> asyncio.subprocess.Process:
    args = [uri] if pattern is None else [uri, pattern]
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.faults.migrate_worker", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def _shape(conn: Connection) -> tuple[frozenset[str], frozenset[str]]:
    found = inspect(conn)
    tables = frozenset(found.get_table_names()) - {"alembic_version"}
    jobs = frozenset(c["name"] for c in found.get_columns("jobs")) if "jobs" in tables else frozenset()
    return tables, jobs & REVISION_0002_COLUMNS


@needs_transactional_ddl
@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid-0001", "mid-0002", "mid-0003"])
async def test_upgrade_killed_half_way_leaves_a_consistent_revision(db_uri: str, point: str) -> None:
    """Promise: when an upgrade process is killed (SIGKILL) in the middle of a revision, a
    second upgrader that was waiting for the migration lock meanwhile gets the lock,
    completes the upgrade to head with every table and column in place, and the store
    opens and writes."""
    victim = await _spawn(db_uri, KILL_POINTS[point])
    assert victim.stdout is not None
    line = (await asyncio.wait_for(victim.stdout.readline(), HANG_GUARD)).decode().strip()
    assert line == "paused", (await victim.communicate())[1].decode()
    waiter = await _spawn(db_uri)
    await asyncio.sleep(0.5)  # the waiter reaches the migration lock and blocks there
    assert waiter.returncode is None
    victim.send_signal(signal.SIGKILL)
    await victim.wait()

    # The waiter may have started at once: check the end state here, and the state a
    # killed upgrade leaves on its own in the next test.
    out, err = await asyncio.wait_for(waiter.communicate(), HANG_GUARD)
    assert (waiter.returncode, out.decode().strip()) == (0, "done"), err.decode()[-2000:]

    engine = create_engine(StoreConfig.load(db_uri))
    try:
        assert await migrate.current_revision(engine) == migrate.head_revision()
        async with engine.connect() as conn:
            assert await conn.run_sync(_shape) == (ALL_TABLES, REVISION_0002_COLUMNS)
    finally:
        await engine.dispose()
    async with AsyncStore.open(db_uri) as store:
        await store.uow.run(lambda c: c.execute(insert(experiments), [{"name": "after-migration"}]))
        assert await count_rows(store, experiments) == 1


@needs_transactional_ddl
@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
async def test_state_left_by_a_killed_upgrade_is_one_whole_revision(db_uri: str, point: str) -> None:
    """Promise: right after an upgrade is killed at any point, with no one else touching
    the database, its revision and its tables agree (no table of an unrecorded revision,
    no recorded revision with missing tables), and a plain ``migrate.upgrade`` then
    reaches head."""
    victim = await _spawn(db_uri, KILL_POINTS[point])
    assert victim.stdout is not None
    line = (await asyncio.wait_for(victim.stdout.readline(), HANG_GUARD)).decode().strip()
    assert line == "paused", (await victim.communicate())[1].decode()
    victim.send_signal(signal.SIGKILL)
    await victim.wait()

    engine = create_engine(StoreConfig.load(db_uri))
    try:
        revision = await migrate.current_revision(engine)
        async with engine.connect() as conn:
            shape = await conn.run_sync(_shape)
        expected = {
            None: (frozenset(), frozenset()),
            "0001_initial": (TABLES_BEFORE_0003, frozenset()),
            "0002_job_queue": (TABLES_BEFORE_0003, REVISION_0002_COLUMNS),
            "0003_mlflow_3_17_columns": (ALL_TABLES, REVISION_0002_COLUMNS),
            "0004_job_claim_order": (ALL_TABLES, REVISION_0002_COLUMNS),
        }
        assert revision in expected
        assert shape == expected[revision]
        await asyncio.wait_for(migrate.upgrade(engine), HANG_GUARD)
        assert await migrate.current_revision(engine) == migrate.head_revision()
    finally:
        await engine.dispose()
