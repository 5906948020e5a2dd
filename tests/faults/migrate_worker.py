"""A child process that upgrades a database and can freeze half-way, to be killed there.

``python -m tests.faults.migrate_worker URI [PATTERN]``: run ``migrate.upgrade`` on URI.
With PATTERN (a regular expression), right after the first SQL statement matching it
has executed, print ``paused`` and sleep, so the parent can kill the process in the
middle of the upgrade. Without it, print ``done`` when the upgrade has finished.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from typing import Any

from sqlalchemy import event

from asyncstore import migrate
from asyncstore.config import StoreConfig
from asyncstore.engines import create_engine


async def _upgrade(uri: str, pattern: str | None) -> None:
    engine = create_engine(StoreConfig.load(uri))
    if pattern is not None:
        regex = re.compile(pattern)

        @event.listens_for(engine.sync_engine, "after_cursor_execute")
        def _freeze(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if regex.search(statement):
                print("paused", flush=True)
                time.sleep(300)  # blocks the whole process: the parent kills it here

    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(_upgrade(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
