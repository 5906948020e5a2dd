"""Job handlers for the worker-process tests (tests/test_worker_processes.py), run by ``asyncstore worker``.

``asyncstore worker tests.worker_handlers:HANDLERS`` imports this module in a
worker process. Every handler appends lines to the file named by
``ASYNCSTORE_TEST_RUN_LOG`` (one ``write`` of one line each, ``O_APPEND``, so lines
of concurrent processes never mix, and a line written before ``os._exit`` is kept)::

    start <job_id> <pid> <epoch seconds> <attempt>
    end <job_id> <pid> <epoch seconds> <attempt>

A run that has a start and no end died with its process (or was cancelled: then
the line is ``stop``).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from asyncstore.worker import JobContext


def _log(event: str, ctx: JobContext) -> None:
    line = f"{event} {ctx.job_id} {os.getpid()} {time.time():.6f} {ctx.attempt}\n"
    fd = os.open(os.environ["ASYNCSTORE_TEST_RUN_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


async def ok(params: dict[str, Any], ctx: JobContext) -> Any:
    _log("start", ctx)
    await asyncio.sleep(0)
    _log("end", ctx)
    return {"i": params["i"]}


def sync_ok(params: dict[str, Any], ctx: JobContext) -> Any:
    _log("start", ctx)
    _log("end", ctx)
    return {"i": params["i"]}


async def fail(params: dict[str, Any], ctx: JobContext) -> Any:
    _log("start", ctx)
    _log("end", ctx)
    raise RuntimeError("always fails")


async def slow(params: dict[str, Any], ctx: JobContext) -> Any:
    _log("start", ctx)
    try:
        await asyncio.sleep(30)  # far past the job's timeout
    finally:
        _log("stop", ctx)
    return "never"


async def kill(params: dict[str, Any], ctx: JobContext) -> Any:
    _log("start", ctx)
    os._exit(17)  # the handler takes its worker process down with it


async def nap(params: dict[str, Any], ctx: JobContext) -> Any:
    _log("start", ctx)
    try:
        await asyncio.sleep(params["seconds"])
    except asyncio.CancelledError:
        _log("stop", ctx)
        raise
    _log("end", ctx)
    return "rested"


def hold(params: dict[str, Any], ctx: JobContext) -> Any:
    """Sleeps ``seconds`` on its first attempt only (the one a test stalls), then says who ran it."""
    _log("start", ctx)
    time.sleep(params["seconds"] if ctx.attempt == 1 else 0)
    _log("end", ctx)
    return f"held by {os.getpid()}"


HANDLERS = {"ok": ok, "sync_ok": sync_ok, "fail": fail, "slow": slow, "kill": kill, "nap": nap, "hold": hold}
