"""SQLite under concurrency: writers never see "database is locked"; in-memory databases."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import AsyncStore
from asyncstore.schema import experiment_tags, experiments
from tests.helpers import count_rows, sqlite_only


def _read_then_write(name: str) -> Any:
    async def fn(conn: AsyncConnection) -> int:
        # Reads first, then writes: the pattern that fails at once with "database is
        # locked" when a deferred transaction has to upgrade its lock.
        before = await conn.scalar(select(func.count()).select_from(experiments))
        result = await conn.execute(insert(experiments).values(name=name))
        experiment_id = int(result.inserted_primary_key[0])
        await conn.execute(insert(experiment_tags).values(key="seen", value=str(before), experiment_id=experiment_id))
        return experiment_id

    return fn


@sqlite_only
async def test_fifty_concurrent_writers_in_two_stores(migrated_uri: str) -> None:
    # Two stores on one file behave like two processes: they do not share the
    # in-process write lock, so SQLite's own locking (BEGIN IMMEDIATE + busy timeout)
    # has to keep them apart.
    async with AsyncStore.open(migrated_uri) as one, AsyncStore.open(migrated_uri) as two:
        names = [f"w{i}-{uuid.uuid4().hex[:6]}" for i in range(50)]
        readers = [one.uow.run(lambda c: c.scalar(select(func.count()).select_from(experiments)), write=False)
                   for _ in range(10)]
        writers = [(one if i % 2 else two).uow.run(_read_then_write(name)) for i, name in enumerate(names)]
        results = await asyncio.gather(*writers, *readers, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == []
        assert len(set(results[:50])) == 50  # 50 distinct ids
        stored = await one.uow.run(lambda c: c.scalars(select(experiments.c.name)), write=False)
        assert sorted(stored) == sorted(names)
        assert await count_rows(two, experiment_tags) == 50


async def test_memory_database_is_one_database_for_every_session() -> None:
    async with AsyncStore.open("sqlite:///:memory:") as store:
        assert store.engine.sync_engine.pool.__class__.__name__ == "StaticPool"
        names = [f"m{i}" for i in range(20)]
        # Concurrent writers and readers all see the one database (schema included).
        results = await asyncio.gather(
            *(store.uow.run(_read_then_write(name)) for name in names),
            *(store.uow.run(lambda c: c.scalar(select(func.count()).select_from(experiments)), write=False)
              for _ in range(5)),
        )
        assert len(set(results[:20])) == 20
        async with store.uow.transaction(write=False) as conn:
            assert sorted(await conn.scalars(select(experiments.c.name))) == sorted(names)
        assert await count_rows(store, experiment_tags) == 20
