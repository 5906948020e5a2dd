"""SQLite WAL checkpoints in a thread of the store's own (asyncstore.sqlite_checkpoint)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import text

from asyncstore import AsyncStore, sqlite_checkpoint
from asyncstore.config import StoreConfig
from asyncstore.engines import create_readonly_engine, dispose_engine, engine_state, get_engine
from asyncstore.uow import UnitOfWork
from tests.helpers import eventually, make_experiment, make_span, new_trace_id

WRITTEN = 50 * 5000
"""Bytes of span attributes :func:`_write` writes: far below SQLite's own 1,000-page checkpoint."""


async def _pragma(engine: Any, name: str) -> Any:
    return await UnitOfWork(engine).run(lambda c: c.scalar(text(f"PRAGMA {name}")), write=False)


async def _write(store: AsyncStore) -> str:
    """Spans holding :data:`WRITTEN` bytes, committed (into the WAL); their trace id."""
    experiment = str(await make_experiment(store))
    trace = new_trace_id()
    await store.spans.log_spans(experiment, [make_span(trace, attributes={"x": "y" * 5000}) for _ in range(50)])
    return trace


async def test_a_thread_checkpoints_the_log_off_the_commits(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await AsyncStore.open(f"sqlite:///{path}", upgrade=True, sqlite_checkpoint_interval=0.05)
    try:
        checkpointer = sqlite_checkpoint.running(str(path))
        assert checkpointer is not None and checkpointer.alive
        assert engine_state(store.engine).checkpoint is not None
        # Commits checkpoint only as a backstop, far beyond SQLite's 1,000 pages.
        assert await _pragma(store.engine, "wal_autocheckpoint") == sqlite_checkpoint.BACKSTOP_PAGES

        async def settled() -> bool:  # the migrations' pages are copied: the file stops growing
            size = path.stat().st_size
            await asyncio.sleep(0.3)
            return checkpointer.checkpoints > 0 and path.stat().st_size == size

        assert await eventually(settled, True)
        size = path.stat().st_size
        trace = await _write(store)

        async def grown() -> bool:  # only a checkpoint writes into the database file in WAL mode
            return path.stat().st_size >= size + WRITTEN

        assert await eventually(grown, True)
        assert len(await store.spans.get_spans(trace)) == 50
    finally:
        await store.close()
    checkpointer.join(5)
    assert not checkpointer.alive  # the engine's disposal stopped it
    assert sqlite_checkpoint.running(str(path)) is None


async def test_interval_zero_leaves_checkpoints_to_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    store = await AsyncStore.open(f"sqlite:///{path}", upgrade=True, sqlite_checkpoint_interval=0)
    try:
        assert engine_state(store.engine).checkpoint is None
        assert sqlite_checkpoint.running(str(path)) is None
        assert await _pragma(store.engine, "wal_autocheckpoint") == 1000  # SQLite's default
        size = path.stat().st_size
        await _write(store)
        await asyncio.sleep(0.5)
        assert path.stat().st_size < size + WRITTEN  # in the log, not yet copied
    finally:
        await store.close()


async def test_engines_of_two_loops_share_one_checkpointer(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/shared.db"
    engine = get_engine(uri)
    checkpointer = sqlite_checkpoint.running(f"{tmp_path}/shared.db")
    assert checkpointer is not None and checkpointer.users == 1

    async def other_loop() -> tuple[bool, int]:
        theirs = get_engine(uri)
        try:
            return sqlite_checkpoint.running(f"{tmp_path}/shared.db") is checkpointer, checkpointer.users
        finally:
            await dispose_engine(theirs)

    assert await asyncio.to_thread(asyncio.run, other_loop()) == (True, 2)
    assert checkpointer.users == 1 and checkpointer.alive  # still ours
    await dispose_engine(engine)
    checkpointer.join(5)
    assert not checkpointer.alive


async def test_no_checkpointer_for_memory_or_read_only_databases(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    store = await AsyncStore.open(f"sqlite:///{path}", upgrade=True)
    await store.close()
    memory = get_engine("sqlite://")
    readonly = create_readonly_engine(StoreConfig.load(f"sqlite:///{path}"))
    try:
        assert engine_state(memory).checkpoint is None
        assert engine_state(readonly).checkpoint is None
        assert sqlite_checkpoint.running(str(path)) is None
    finally:
        await dispose_engine(memory)
        await dispose_engine(readonly)


def test_the_thread_never_creates_a_database(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    checkpointer = sqlite_checkpoint.acquire(str(path), 0.01)
    try:
        (tmp_path / "absent.db-wal").write_bytes(b"")  # a log without its database
        threading.Event().wait(0.2)
        assert not path.exists()
        assert checkpointer.alive and checkpointer.checkpoints == 0
    finally:
        sqlite_checkpoint.release(checkpointer)
        checkpointer.join(5)
    assert not checkpointer.alive
