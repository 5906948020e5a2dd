"""Read-only calls whose server session is killed: they always succeed.

A read-only call changes nothing, so running it again is always safe, wherever its
connection died: before a statement, between two, or during COMMIT (the kill after
its last statement). The unit of work retries it on a fresh connection within the
transaction retry budget. First every read call is killed at each of its statement
boundaries; then sessions are killed at random moments while readers run
concurrently.
"""

from __future__ import annotations

import asyncio
import random

from asyncstore import AsyncStore
from tests.faults import admin
from tests.faults.killer import StatementKiller
from tests.helpers import comparable, needs_server, read_calls, transaction_retries

@needs_server
async def test_every_read_killed_at_every_statement_boundary_succeeds(store: AsyncStore) -> None:
    """Promise: a read-only call whose session is killed after any of its statements,
    the last one included (so that COMMIT meets the dead connection), returns what it
    returns undisturbed, after a retry; no connection is left checked out."""
    reads = await read_calls(store)
    for name, read in reads.items():
        counter = StatementKiller(store.engine, store.config.uri, store.backend, None)
        with counter.armed():
            expected = comparable(await read())
        assert counter.seen >= 1, name
        for at in range(1, counter.seen + 1):
            killer = StatementKiller(store.engine, store.config.uri, store.backend, at)
            with transaction_retries() as retries, killer.armed():
                got = comparable(await read())
            assert killer.killed, (name, at)
            assert got == expected, (name, at)
            assert len(retries) >= 1, (name, at)  # it met the dead connection and ran again
    assert store.engine.sync_engine.pool.checkedout() == 0


@needs_server
async def test_reads_under_random_session_kills_all_succeed(store: AsyncStore) -> None:
    """Promise: 16 concurrent readers making every kind of read call while the store's
    sessions are killed at random moments (about every 40 ms, each kill waiting for the
    session to be gone) all succeed, with the same results as without kills."""
    reads = await read_calls(store)
    expected = {name: comparable(await read()) for name, read in reads.items()}
    names = sorted(reads)
    rng = random.Random(14)
    stop = asyncio.Event()
    failures: list[str] = []
    calls = 0

    async def reader(seed: int) -> None:
        nonlocal calls
        mine = random.Random(seed)
        while not stop.is_set():
            name = mine.choice(names)
            try:
                got = comparable(await reads[name]())
            except Exception as exc:  # any error at all breaks the promise
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if got != expected[name]:
                failures.append(f"{name}: different result")
            calls += 1

    kills = 0
    with transaction_retries() as retries:
        readers = [asyncio.ensure_future(reader(i)) for i in range(16)]
        try:
            for _ in range(40):
                await asyncio.sleep(rng.uniform(0.01, 0.07))
                kills += await admin.kill_all_sessions(store.config.uri)
        finally:
            stop.set()
            await asyncio.gather(*readers)
    assert failures == []
    assert kills >= 20 and len(retries) >= 1 and calls >= 100, (kills, len(retries), calls)
    assert store.engine.sync_engine.pool.checkedout() == 0
