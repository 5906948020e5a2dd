"""A child process for the SQLite faults: ``python -m tests.faults.sqlite_worker MODE URI PREFIX``.

Modes:

* ``write``: 4 writer tasks and 2 reader tasks on one store; each writer commits
  ``BATCHES`` batches of ``ROWS`` experiments named ``PREFIX-<task>-<batch>-<row>``,
  starting once the store is open and ``ready`` is printed.
  Exit status 0 when every call succeeded; otherwise the error is printed and the
  status is 1.
* ``hold``: begin a write transaction, insert ``ROWS`` experiments, print ``holding``
  and sleep (the parent kills the process there, mid-transaction).
"""

from __future__ import annotations

import asyncio
import sys

from sqlalchemy import func, insert, select

from asyncstore import AsyncStore
from asyncstore.schema import experiments

WRITERS, READERS, BATCHES, ROWS = 4, 2, 40, 10


async def _write(uri: str, prefix: str) -> None:
    async with AsyncStore.open(uri) as store:
        print("ready", flush=True)

        async def writer(t: int) -> None:
            for b in range(BATCHES):
                rows = [{"name": f"{prefix}-{t}-{b}-{r}"} for r in range(ROWS)]
                await store.uow.run(lambda c, rows=rows: c.execute(insert(experiments), rows))

        async def reader() -> None:
            for _ in range(BATCHES):
                await store.uow.run(lambda c: c.scalar(select(func.count()).select_from(experiments)), write=False)

        await asyncio.gather(*(writer(t) for t in range(WRITERS)), *(reader() for _ in range(READERS)))


async def _hold(uri: str, prefix: str) -> None:
    async with AsyncStore.open(uri) as store:
        async with store.uow.transaction() as conn:
            await conn.execute(insert(experiments), [{"name": f"{prefix}-{r}"} for r in range(ROWS)])
            print("holding", flush=True)
            await asyncio.sleep(120)


def main() -> int:
    """Run one mode; 0 on success, 1 (with the error printed) on any failure."""
    mode, uri, prefix = sys.argv[1:4]
    try:
        asyncio.run(_write(uri, prefix) if mode == "write" else _hold(uri, prefix))
    except Exception as exc:  # reported to the parent test through stdout
        print(f"FAILED {type(exc).__name__}: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
