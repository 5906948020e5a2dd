"""Pool exhaustion: more concurrent callers than ``pool_size + max_overflow``."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import AsyncStore, ErrorCode, StoreError
from asyncstore.schema import experiments
from tests.helpers import count_rows

POOL_SIZE, MAX_OVERFLOW, EXTRA = 2, 1, 5
HANG_GUARD = 60  # seconds: only there so that a hang fails the test instead of CI


async def test_extra_callers_get_temporarily_unavailable_while_others_succeed(migrated_uri: str) -> None:
    """Promise: with every connection held, the callers beyond ``pool_size +
    max_overflow`` get TEMPORARILY_UNAVAILABLE after ``pool_timeout`` (while the holders
    still hold: they are released only once every extra caller has its answer) and
    write nothing; the holders then finish with the right answer, nothing hangs and no
    connection stays checked out."""
    async with AsyncStore.open(
        migrated_uri, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW, pool_timeout=0.3
    ) as store:
        capacity = POOL_SIZE + MAX_OVERFLOW
        holding = asyncio.Semaphore(0)
        release = asyncio.Event()

        await store.uow.run(lambda c: c.execute(insert(experiments), [{"name": f"seed-{i}"} for i in range(7)]))

        async def hold(conn: AsyncConnection) -> int:
            seen = int(await conn.scalar(select(func.count()).select_from(experiments)))
            holding.release()
            await release.wait()
            return seen

        async def extra(i: int) -> ErrorCode | None:
            try:
                await store.uow.run(lambda c: c.execute(insert(experiments), [{"name": f"extra-{i}"}]))
            except StoreError as exc:
                assert "pool_timeout" in exc.message  # says what to change
                return exc.code
            return None

        # Holders only read: on SQLite writers queue on the write lock, not on the pool.
        holders = [asyncio.ensure_future(store.uow.run(hold, write=False)) for _ in range(capacity)]
        for _ in range(capacity):
            await asyncio.wait_for(holding.acquire(), HANG_GUARD)
        assert store.engine.sync_engine.pool.checkedout() == capacity
        codes = await asyncio.wait_for(asyncio.gather(*(extra(i) for i in range(EXTRA))), HANG_GUARD)
        assert not release.is_set()
        release.set()
        seen = await asyncio.wait_for(asyncio.gather(*holders), HANG_GUARD)

        assert codes == [ErrorCode.TEMPORARILY_UNAVAILABLE] * EXTRA
        assert store.engine.sync_engine.pool.checkedout() == 0
        assert seen == [7] * capacity
        assert await count_rows(store, experiments, experiments.c.name.like("extra-%")) == 0
        # Afterwards the pool serves everyone again.
        await asyncio.gather(
            *(store.uow.run(lambda c, i=i: c.execute(insert(experiments), [{"name": f"later-{i}"}])) for i in range(EXTRA))
        )
        assert await count_rows(store, experiments, experiments.c.name.like("later-%")) == EXTRA
