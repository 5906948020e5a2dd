"""Committed snapshots of the migrated schema: the CREATE statements per dialect.

``tests/test_migrations.py`` migrates an empty database to head on each backend and
compares :func:`dump` of it with the committed ``<backend>.sql`` here. After a schema
change (schema.py plus a revision), regenerate them with::

    python -m tests.schema_snapshots --update

(run from the repository root, with the PostgreSQL and MySQL test servers up; see
tests/conftest.py for ASYNCSTORE_TEST_POSTGRESQL_URI / ASYNCSTORE_TEST_MYSQL_URI).
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateIndex, CreateTable

from asyncstore import migrate
from asyncstore.config import StoreConfig
from asyncstore.engines import create_engine

HERE = Path(__file__).resolve().parent
UPDATE_COMMAND = "python -m tests.schema_snapshots --update"


def snapshot_path(backend: str) -> Path:
    """Where the committed snapshot of a backend lives."""
    return HERE / f"{backend}.sql"


async def dump(uri: str) -> str:
    """The normalised CREATE statements of the database at ``uri`` (tables and indexes, by name)."""
    engine = create_engine(StoreConfig.load(uri))
    try:
        revision = await migrate.current_revision(engine)
        async with engine.connect() as conn:
            statements = await conn.run_sync(_statements)
    finally:
        await engine.dispose()
    header = f"-- revision {revision}; regenerate with: {UPDATE_COMMAND}"
    return "\n\n".join([header, *statements]) + "\n"


def _statements(conn: Connection) -> list[str]:
    name = conn.dialect.name
    if name == "sqlite":
        rows = conn.execute(
            text(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' "
                "ORDER BY type DESC, name"
            )
        )
        return [_tidy(sql) + ";" for (sql,) in rows]
    if name in ("mysql", "mariadb"):
        tables = sorted(row[0] for row in conn.execute(text("SHOW TABLES")))
        ddl = [conn.execute(text(f"SHOW CREATE TABLE `{t}`")).one()[1] for t in tables]
        return [_tidy(re.sub(r" AUTO_INCREMENT=\d+", "", sql)) + ";" for sql in ddl]
    # PostgreSQL has no SHOW CREATE TABLE: rebuild the DDL from the reflected catalog.
    reflected = MetaData()
    reflected.reflect(conn)
    statements = []
    for table in sorted(reflected.tables.values(), key=lambda t: t.name):
        statements.append(_sort_constraints(str(CreateTable(table).compile(dialect=conn.dialect))) + ";")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            statements.append(_tidy(str(CreateIndex(index).compile(dialect=conn.dialect))) + ";")
    return statements


def _tidy(sql: str) -> str:
    lines = [line.rstrip() for line in sql.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def _sort_constraints(sql: str) -> str:
    """Put the constraint lines of a CREATE TABLE in name order (reflection order varies)."""
    lines = _tidy(sql).splitlines()
    head, body, tail = lines[0], [line.strip().rstrip(",") for line in lines[1:-1]], lines[-1]
    columns = [line for line in body if not line.startswith(("CONSTRAINT", "PRIMARY KEY", "FOREIGN KEY", "UNIQUE", "CHECK"))]
    constraints = sorted(line for line in body if line not in columns)
    return "\n".join([head, ",\n".join("\t" + line for line in columns + constraints), tail])
