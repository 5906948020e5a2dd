"""SQLite: tasks and processes sharing one database file, and a writer killed mid-transaction."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from asyncstore import AsyncStore
from asyncstore.schema import experiments
from tests.faults import sqlite_worker
from tests.helpers import count_rows, sqlite_only

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD = 120  # seconds: only there so that a hang fails the test instead of CI


async def _spawn(mode: str, uri: str, prefix: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.faults.sqlite_worker", mode, uri, prefix,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


@sqlite_only
@pytest.mark.slow
async def test_tasks_and_two_processes_share_one_file(migrated_uri: str) -> None:
    """Promise: two child processes and this one, each with 4 writer and 2 reader tasks,
    write and read the same SQLite file at once; no call fails (no "database is locked"
    reaches a caller within the busy timeout) and every row written is there."""
    children = [await _spawn("write", migrated_uri, f"proc{n}") for n in range(2)]
    for child in children:  # all three start writing together
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), HANG_GUARD)).decode().strip() == "ready"
    async with AsyncStore.open(migrated_uri) as store:
        per_batch = sqlite_worker.ROWS

        async def writer(t: int) -> None:
            for b in range(sqlite_worker.BATCHES):
                rows = [{"name": f"main-{t}-{b}-{r}"} for r in range(per_batch)]
                await store.uow.run(lambda c, rows=rows: c.execute(insert(experiments), rows))

        async def reader() -> None:
            for _ in range(sqlite_worker.BATCHES):
                await store.uow.run(lambda c: c.scalar(select(func.count()).select_from(experiments)), write=False)

        await asyncio.wait_for(
            asyncio.gather(*(writer(t) for t in range(sqlite_worker.WRITERS)), *(reader() for _ in range(2))),
            HANG_GUARD,
        )
        outputs = [await asyncio.wait_for(child.communicate(), HANG_GUARD) for child in children]
        assert [(child.returncode, out.decode()) for child, (out, _) in zip(children, outputs)] == [(0, "")] * 2
        expected = sqlite_worker.WRITERS * sqlite_worker.BATCHES * per_batch
        for prefix in ("main", "proc0", "proc1"):
            assert await count_rows(store, experiments, experiments.c.name.like(f"{prefix}-%")) == expected


@sqlite_only
async def test_process_killed_mid_transaction_leaves_nothing_and_releases_the_lock(migrated_uri: str) -> None:
    """Promise: a process killed (SIGKILL) while it holds SQLite's write lock in the middle
    of a transaction leaves none of its rows; a writer of another process that was
    waiting for the lock proceeds once the lock is gone, and its rows are all there."""
    child = await _spawn("hold", migrated_uri, "killed")
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), HANG_GUARD)
    assert line.decode().strip() == "holding"
    async with AsyncStore.open(migrated_uri) as store:
        waiting = asyncio.ensure_future(
            store.uow.run(lambda c: c.execute(insert(experiments), [{"name": f"survivor-{r}"} for r in range(5)]))
        )
        await asyncio.sleep(0.3)  # let the writer reach SQLite's busy handler
        assert not waiting.done()  # it waits for the lock instead of failing
        child.send_signal(signal.SIGKILL)
        await child.wait()
        await asyncio.wait_for(waiting, HANG_GUARD)
        assert await count_rows(store, experiments, experiments.c.name.like("killed-%")) == 0
        assert await count_rows(store, experiments, experiments.c.name.like("survivor-%")) == 5
