"""AsyncStore lifecycle: open creates or verifies the schema, close disposes."""

from __future__ import annotations

import gc

import anyio
import pytest
from sqlalchemy import text

from asyncstore import AsyncStore, SchemaOutOfDate, migrate


async def test_open_creates_schema_on_empty_database(db_uri: str) -> None:
    async with AsyncStore.open(db_uri) as store:
        assert await migrate.current_revision(store.engine) == migrate.head_revision()
        async with store.uow.transaction(write=False) as conn:
            assert (await conn.execute(text("SELECT COUNT(*) FROM experiments"))).scalar() == 0


async def test_open_refuses_out_of_date_database_unless_upgrade(db_uri: str) -> None:
    async with AsyncStore.open(db_uri) as store:
        await migrate.downgrade(store.engine, "0001_initial")
    with pytest.raises(SchemaOutOfDate) as info:
        async with AsyncStore.open(db_uri):
            pass
    assert "0001_initial" in str(info.value) and "asyncstore db upgrade" in str(info.value)
    async with AsyncStore.open(db_uri, upgrade=True) as store:
        assert await migrate.current_revision(store.engine) == migrate.head_revision()


async def test_await_open_and_close(migrated_uri: str) -> None:
    store = await AsyncStore.open(migrated_uri)
    assert "open" in repr(store)
    await store.close()
    await store.close()  # a second close is harmless
    assert "closed" in repr(store)


async def test_unclosed_store_warns(migrated_uri: str) -> None:
    store = await AsyncStore.open(migrated_uri)
    engine = store.engine
    with pytest.warns(ResourceWarning, match="never closed"):
        del store
        gc.collect()
    await engine.dispose()


def test_works_under_anyio(migrated_uri: str) -> None:
    async def main() -> int:
        async with AsyncStore.open(migrated_uri) as store:
            async with store.uow.transaction(write=False) as conn:
                return int((await conn.execute(text("SELECT 1"))).scalar_one())

    assert anyio.run(main, backend="asyncio") == 1
