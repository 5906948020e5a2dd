"""``asyncstore worker MODULE:OBJECT``: run a :class:`~asyncstore.worker.Worker` until SIGTERM or SIGINT.

``OBJECT`` is a dict of job name -> handler in the importable module ``MODULE``
(the current directory is on the import path, as for ``python -m``). The first
SIGTERM or SIGINT stops claiming and lets running handlers end within
``--grace-seconds``, then releases the rest to PENDING and exits 0; a second one
exits at once with status 1, leaving the jobs it held to their leases.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from asyncstore.cliargs import add_store_options, non_negative_number, positive_int, positive_number

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_USAGE = 2
EXIT_ABORTED = 1
log = logging.getLogger("asyncstore.worker")


def add_worker_command(subparsers: Subparsers) -> None:
    """Register ``asyncstore worker`` on the ``asyncstore`` command line."""
    parser = subparsers.add_parser(
        "worker",
        help="run the handlers of queued jobs (store.jobs) until SIGTERM",
        description="Claim queued jobs in batches and run their handlers: OBJECT in MODULE is a dict of "
        "job name -> handler(params, context), an async def or a plain function (run in a thread). "
        "SIGTERM or Ctrl-C stops claiming, waits --grace-seconds for running handlers, releases the rest "
        "to PENDING and exits 0; a second signal exits at once (status 1).",
    )
    parser.add_argument("target", metavar="MODULE:OBJECT", help="the handlers, e.g. myapp.jobs:HANDLERS")
    add_store_options(parser)
    parser.add_argument("--queues", default=None, metavar="NAME,NAME",
                        help="job names to claim, comma-separated (default: every name OBJECT has a handler for)")
    parser.add_argument("--concurrency", type=positive_int, default=8, metavar="N",
                        help="jobs run at once, and the largest claim (default: 8)")
    parser.add_argument("--lease-seconds", type=positive_number, default=30.0, metavar="S",
                        help="lease of a claimed job, renewed every third of it while it runs (default: 30)")
    parser.add_argument("--poll-interval", type=positive_number, default=0.05, metavar="S",
                        help="first wait between claims when idle, doubling (default: 0.05)")
    parser.add_argument("--max-poll-interval", type=positive_number, default=1.0, metavar="S",
                        help="longest wait between claims when idle; PostgreSQL's NOTIFY ends a wait at once (default: 1)")
    parser.add_argument("--grace-seconds", type=non_negative_number, default=30.0, metavar="S",
                        help="at shutdown, how long running handlers may take before they are cancelled (default: 30)")
    parser.set_defaults(handler=run_worker)


def load_handlers(target: str) -> Mapping[str, Any]:
    """Import ``MODULE:OBJECT`` and return the handlers dict it names.

    Raises:
        ValueError: a malformed target, a module or attribute that does not exist, or
            an object that is not a dict (the message says which).
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{target!r} is not MODULE:OBJECT (e.g. myapp.jobs:HANDLERS)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from exc
    try:
        found: Any = module
        for part in attribute.split("."):
            found = getattr(found, part)
    except AttributeError as exc:
        raise ValueError(f"module {module_name!r} has no {attribute!r}") from exc
    if not isinstance(found, Mapping):
        raise ValueError(f"{target} is {type(found).__name__}; expected a dict of job name -> handler")
    return found


async def run_worker(args: argparse.Namespace) -> int:
    """The ``worker`` command: load the handlers, open the store, run until signalled."""
    from asyncstore.errors import StoreError
    from asyncstore.store import AsyncStore
    from asyncstore.worker.runtime import Worker

    if not log.handlers:  # a long-running process: say what it does on stderr
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(stream)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        handlers = load_handlers(args.target)
    except ValueError as exc:
        print(f"asyncstore worker: {exc}", file=sys.stderr)
        return EXIT_USAGE
    queues = None if args.queues is None else [name.strip() for name in args.queues.split(",") if name.strip()]
    async with AsyncStore.open(args.uri, upgrade=args.upgrade) as store:
        try:
            worker = Worker(
                store, handlers, queues=queues, concurrency=args.concurrency, lease_seconds=args.lease_seconds,
                poll_interval=args.poll_interval, max_poll_interval=args.max_poll_interval,
                grace_seconds=args.grace_seconds,
            )
        except StoreError as exc:
            print(f"asyncstore worker: {exc}", file=sys.stderr)
            return EXIT_USAGE
        signals = 0

        def on_signal(signum: int) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info("%s: stopping (a second signal exits at once)", signal.Signals(signum).name)
                worker.stop()
            else:
                log.warning("%s again: exiting now; held jobs come back when their leases expire", signal.Signals(signum).name)
                logging.shutdown()
                os._exit(EXIT_ABORTED)  # threads of plain handlers cannot be interrupted

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await worker.run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
    return 0
