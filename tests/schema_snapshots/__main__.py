"""Regenerate the committed schema snapshots: ``python -m tests.schema_snapshots --update``.

Migrates a fresh database on each backend to head and writes ``<backend>.sql``. Without
``--update`` it only reports which snapshots are out of date (exit code 1).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from tests import dbadmin
from tests.helpers import BACKENDS
from tests.schema_snapshots import dump, snapshot_path


async def _migrate(uri: str) -> None:
    await dbadmin.migrate_to_head(uri)


def generate(backend: str) -> str:
    """The snapshot of a freshly migrated database of ``backend``."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            uri = f"sqlite:///{Path(folder) / 'snapshot.db'}"
            asyncio.run(_migrate(uri))
            return asyncio.run(dump(uri))
    uri = dbadmin.create_database(backend, f"asyncstore_snap_{uuid.uuid4().hex[:10]}")
    try:
        asyncio.run(_migrate(uri))
        return asyncio.run(dump(uri))
    finally:
        dbadmin.drop_database(backend, uri)


def main(argv: list[str] | None = None) -> int:
    """Check or rewrite the snapshots; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tests.schema_snapshots")
    parser.add_argument("--update", action="store_true", help="rewrite the snapshot files")
    parser.add_argument("backends", nargs="*", metavar="BACKEND", help=f"some of {', '.join(BACKENDS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(sorted(unknown))}; choose from {', '.join(BACKENDS)}")
    args.backends = args.backends or list(BACKENDS)
    stale = []
    for backend in args.backends:
        problem = dbadmin.check_server(backend)
        if problem is not None:
            print(f"{backend}: server unreachable ({problem})", file=sys.stderr)
            return 2
        fresh, path = generate(backend), snapshot_path(backend)
        if path.exists() and path.read_text() == fresh:
            print(f"{backend}: up to date")
            continue
        if args.update:
            path.write_text(fresh)
            print(f"{backend}: wrote {path}")
        else:
            stale.append(backend)
            print(f"{backend}: out of date")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
