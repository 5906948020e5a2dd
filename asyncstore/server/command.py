"""``asyncstore serve``: run the OTLP/HTTP receiver under uvicorn.

Importing this module needs none of the ``server`` extra's packages; the command
checks for them when it runs and, if one is missing, prints the install hint and
exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import TYPE_CHECKING

from asyncstore.cliargs import add_store_options, non_negative_number, port, positive_int, positive_number
from asyncstore.server import INSTALL_HINT

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_USAGE = 2
_NEEDED = ("starlette", "uvicorn", "prometheus_client", "opentelemetry.proto")
SWITCH_INTERVAL = 0.0005
"""Seconds a thread may hold the GIL while another waits for it, in the serve process
(Python's default: 0.005). The database drivers' threads (aiosqlite's, the SQLite
checkpointer, the LOAD DATA feeder) each need the GIL back after every statement and
to hand its result to the event loop, which is busy decoding requests: with 5 ms a
SQLite ``log_spans`` held the write lock about a fifth longer, and serve stored 4-8%
fewer spans per second on SQLite (no difference measured on MariaDB)."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def add_serve_command(subparsers: Subparsers) -> None:
    """Register ``asyncstore serve`` on the ``asyncstore`` command line."""
    parser = subparsers.add_parser(
        "serve",
        help="receive OpenTelemetry traces over OTLP/HTTP (POST /v1/traces) into the database",
        description="Serve an OTLP/HTTP trace receiver: POST /v1/traces (protobuf or JSON, optionally gzip), "
        "GET /health, /ready and /metrics. A request is answered once its spans are committed; "
        "concurrent requests are written together (group commit). SIGTERM or Ctrl-C stops accepting "
        "requests and writes those already accepted (within --grace-seconds) before exiting.",
    )
    add_store_options(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=port, default=4318, help="port to listen on (default: 4318, OTLP/HTTP's)")
    parser.add_argument(
        "--experiment-id", default=None, metavar="ID",
        help="experiment of requests without the x-mlflow-experiment-id header (default: none, such requests get 400)",
    )
    parser.add_argument("--max-body-mb", type=positive_number, default=16.0, metavar="N",
                        help="largest request body in MiB, before and after gzip (default: 16); larger is 413")
    parser.add_argument("--max-batch-spans", type=positive_int, default=5000, metavar="N",
                        help="most spans written in one transaction by group commit (default: 5000)")
    parser.add_argument("--max-wait-ms", type=non_negative_number, default=5.0, metavar="MS",
                        help="how long the writer waits for more requests to join a batch (default: 5)")
    parser.add_argument("--writers", type=positive_int, default=2, metavar="N",
                        help="batches written concurrently, each in its own transaction (default: 2)")
    parser.add_argument("--queue-limit", type=positive_int, default=1000, metavar="N",
                        help="requests waiting to be written before new ones get 429 (default: 1000)")
    parser.add_argument("--grace-seconds", type=non_negative_number, default=30.0, metavar="S",
                        help="at shutdown, how long accepted requests may take to be written (default: 30)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn's log level (default: info)")
    parser.set_defaults(handler=run_serve)


async def run_serve(args: argparse.Namespace) -> int:
    """The ``serve`` command: check the extra, build the app, run uvicorn until SIGTERM/SIGINT."""
    missing = [name for name in _NEEDED if not _installed(name)]
    if missing:
        print(f"asyncstore serve needs {', '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_USAGE
    import uvicorn

    from asyncstore.config import StoreConfig
    from asyncstore.server.app import create_app

    uri = str(StoreConfig.load(args.uri).url.render_as_string(hide_password=False))
    app = create_app(
        uri, default_experiment_id=args.experiment_id, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_batch_spans=args.max_batch_spans, max_wait_ms=args.max_wait_ms, queue_limit=args.queue_limit,
        grace_seconds=args.grace_seconds, writers=args.writers, upgrade=args.upgrade,
    )
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, lifespan="on",
        timeout_graceful_shutdown=args.grace_seconds,
    )
    server = uvicorn.Server(config)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        await server.serve()
    finally:
        sys.setswitchinterval(interval)
    return 0 if server.started else EXIT_USAGE
