"""The ``asyncstore`` command line.

::

    asyncstore db upgrade [URI] [--revision REV]   migrate to head (or REV)
    asyncstore db downgrade URI REVISION           migrate down to REVISION ("base": no tables)
    asyncstore db current [URI]                    print the revision the database is at
    asyncstore db check [URI]                      exit 0 when at head, 1 when out of date
    asyncstore serve [--uri URI] [--port 4318] ...  OTLP/HTTP trace receiver (asyncstore.server)
    asyncstore worker MODULE:OBJECT [--uri URI] ...  run the handlers of queued jobs (asyncstore.worker)

URI defaults to ``ASYNCSTORE_DATABASE_URI``, else ``sqlite:///asyncstore.db``. Any
failure (a bad URI, an unreachable server, no database at that path or by that
name, an unknown revision) is one line on stderr and exit code 2, never a
traceback, and never shows a password. ``current`` and ``check`` only read: they
create no file, directory, database or table.

Adding a command: write ``def add_x_command(subparsers) -> None`` that calls
``subparsers.add_parser(...)`` and sets ``handler=`` (an ``async def
handler(args) -> int``) with ``set_defaults``, then append it to
:data:`SUBCOMMANDS` (the list below; ``asyncstore bench`` plugs in there).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from asyncstore import migrate
from asyncstore.bench.runner import add_bench_command
from asyncstore.cliargs import URI_HELP
from asyncstore.config import StoreConfig
from asyncstore.engines import create_engine, create_readonly_engine
from asyncstore.errors import InvalidParameter, StoreError
from asyncstore.server.command import add_serve_command
from asyncstore.worker.command import add_worker_command

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]
"""What a subcommand runs: an async function of the parsed arguments returning the exit code."""

EXIT_OK = 0
EXIT_OUT_OF_DATE = 1  # `db check` only
EXIT_ERROR = 2  # same code argparse uses for a usage error



def add_db_command(subparsers: Subparsers) -> None:
    """Register ``asyncstore db`` and its ``upgrade``, ``downgrade``, ``current`` and ``check``."""
    db = subparsers.add_parser(
        "db", help="migrate and inspect the database schema", description="Migrate and inspect the database schema."
    )
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)

    up = actions.add_parser(
        "upgrade",
        help="migrate the database to the latest revision (or to --revision)",
        description="Migrate the database to the latest revision (or to --revision). "
        "An empty database gets the whole schema. Safe to run from several processes at once.",
    )
    up.add_argument("uri", nargs="?", default=None, metavar="URI", help=URI_HELP)
    up.add_argument("--revision", default="head", metavar="REV", help="target revision (default: head)")
    up.add_argument(
        "--indexes", action="store_true",
        help="on an MLflow database (whose schema only MLflow migrates): add the indexes of asyncstore's "
        "schema it lacks, named asyncstore_*, and change nothing else",
    )
    up.set_defaults(handler=_db_upgrade)

    down = actions.add_parser(
        "downgrade",
        help="migrate the database down to REVISION",
        description="Migrate the database down to REVISION; 'base' removes every table "
        "and its data. The URI is required here, so the default database is never dropped by accident.",
    )
    down.add_argument("uri", metavar="URI", help="database URI")
    down.add_argument(
        "revision", nargs="?", default=None, metavar="REVISION", help="target revision, e.g. 0001_initial or base"
    )
    down.add_argument(
        "--indexes", action="store_true",
        help="on an MLflow database: drop the asyncstore_* indexes `db upgrade --indexes` added (no REVISION)",
    )
    down.set_defaults(handler=_db_downgrade)

    current = actions.add_parser(
        "current",
        help="print the revision the database is at",
        description="Print the revision the database is at. It only reads: a database that does not "
        "exist is an error (exit 2), never created.",
    )
    current.add_argument("uri", nargs="?", default=None, metavar="URI", help=URI_HELP)
    current.set_defaults(handler=_db_current)

    check = actions.add_parser(
        "check",
        help="exit 0 when the database is at the latest revision, 1 when it is not",
        description="Exit 0 when the database is at the latest revision, 1 when it is out of "
        "date (or empty), 2 when it cannot be reached or does not exist. It only reads: it creates "
        "no file, directory, database or table.",
    )
    check.add_argument("uri", nargs="?", default=None, metavar="URI", help=URI_HELP)
    check.set_defaults(handler=_db_check)


SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    add_db_command, add_bench_command, add_serve_command, add_worker_command,
]
"""Registrars of the top-level subcommands, called in order by :func:`build_parser`."""


def build_parser() -> argparse.ArgumentParser:
    """The ``asyncstore`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="asyncstore", description="asyncstore: an async store for experiments, runs, traces, spans and jobs."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (each migration applied) to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in SUBCOMMANDS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (the console script exits with it).

    Example::

        $ asyncstore db upgrade postgresql://postgres@127.0.0.1/test
        postgresql+asyncpg://postgres@127.0.0.1/test is an asyncstore database at revision 0005_spans_redundant_index (head)
    """
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except StoreError as exc:
        _fail(exc.message, args)
    except KeyboardInterrupt:
        _fail("interrupted", args)
    except Exception as exc:  # anything else is a bug, still reported on one line
        _fail(f"unexpected error ({type(exc).__name__}): {exc}", args)
    return EXIT_ERROR


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    elif not root.handlers:
        # Keep stderr to the one error line: no connect-retry warnings, no lastResort output.
        root.addHandler(logging.NullHandler())


def _fail(message: str, args: argparse.Namespace) -> None:
    line = " ".join(str(message).split())  # one line, whatever the driver said
    print(f"asyncstore: error: {_scrub(line, args)}", file=sys.stderr)


def _scrub(text: str, args: argparse.Namespace) -> str:
    """Remove the password of the URI given, wherever a driver may have echoed it."""
    raw = getattr(args, "uri", None)
    if raw is None:
        return text
    try:
        password = StoreConfig.load(raw).url.password
    except Exception:
        password = _password_of(raw)
    if password:
        text = text.replace(str(password), "***")
    return text


def _password_of(raw: str) -> str | None:
    # Best effort for URIs SQLAlchemy cannot parse: "scheme://user:password@host...".
    _, sep, rest = raw.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    return userinfo.partition(":")[2] or None


class _Engine:
    """An engine for one command, disposed at the end (not kept in the cache).

    ``read_only``: for commands that only look; they create no database (see
    :func:`~asyncstore.engines.create_readonly_engine`).
    """

    def __init__(self, uri: str | None, *, read_only: bool = False) -> None:
        self.config = StoreConfig.load(uri)
        self.read_only = read_only
        self.engine: AsyncEngine | None = None

    async def __aenter__(self) -> AsyncEngine:
        self.engine = create_readonly_engine(self.config) if self.read_only else create_engine(self.config)
        return self.engine

    async def __aexit__(self, *exc: Any) -> None:
        if self.engine is not None:
            await self.engine.dispose()


async def _describe(engine: AsyncEngine, config: StoreConfig) -> tuple[migrate.Found, str]:
    found = await migrate.inspect_database(engine)
    return found, migrate.describe(found, config.safe_uri)


async def _migrate_to(args: argparse.Namespace, step: Callable[[AsyncEngine, str], Awaitable[None]]) -> int:
    """Run ``migrate.upgrade`` or ``migrate.downgrade`` to ``args.revision``; print where it ends."""
    opened = _Engine(args.uri)
    async with opened as engine:
        await step(engine, args.revision)
        _, line = await _describe(engine, opened.config)
    print(line)
    return EXIT_OK


async def _db_upgrade(args: argparse.Namespace) -> int:
    if args.indexes:
        if args.revision != "head":
            raise InvalidParameter("--indexes takes no --revision: it only adds indexes to an MLflow database")
        return await _indexes(args, migrate.add_indexes, "added")
    return await _migrate_to(args, migrate.upgrade)


async def _db_downgrade(args: argparse.Namespace) -> int:
    if args.indexes:
        if args.revision is not None:
            raise InvalidParameter("--indexes takes no REVISION: it only drops asyncstore's indexes from an MLflow database")
        return await _indexes(args, migrate.drop_indexes, "dropped")
    if args.revision is None:
        raise InvalidParameter("db downgrade needs a REVISION (e.g. 0001_initial, or base), or --indexes")
    return await _migrate_to(args, migrate.downgrade)


async def _indexes(args: argparse.Namespace, change: Callable[[AsyncEngine], Awaitable[list[str]]], done: str) -> int:
    """``--indexes``: add or drop asyncstore's indexes on an MLflow database; say which."""
    opened = _Engine(args.uri)
    async with opened as engine:
        names = await change(engine)
        _, line = await _describe(engine, opened.config)
    print(f"{done} {len(names)} index(es){': ' + ', '.join(names) if names else ''}")
    print(line)
    return EXIT_OK


async def _db_current(args: argparse.Namespace) -> int:
    opened = _Engine(args.uri, read_only=True)
    async with opened as engine:
        _, line = await _describe(engine, opened.config)
    print(line)
    return EXIT_OK


async def _db_check(args: argparse.Namespace) -> int:
    opened = _Engine(args.uri, read_only=True)
    async with opened as engine:
        found, line = await _describe(engine, opened.config)
    if found.served:
        print(line)
        return EXIT_OK
    out_of_date = found.kind in (migrate.Kind.EMPTY, migrate.Kind.ASYNCSTORE)
    print(f"{line}: out of date, run `asyncstore db upgrade`" if out_of_date else line)
    return EXIT_OUT_OF_DATE


if __name__ == "__main__":  # python -m asyncstore.cli
    sys.exit(main())
