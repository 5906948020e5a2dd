"""Commands and calls that only look (``db current``, ``db check``, ``migrate.current_revision``,
``migrate.verify``) leave the file system and the server exactly as they found them."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from asyncstore import cli, migrate
from asyncstore.config import StoreConfig
from asyncstore.engines import create_readonly_engine, get_engine
from asyncstore.errors import DatabaseConnectError, SchemaOutOfDate
from tests import dbadmin

READ_ONLY = ["current", "check"]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(root: Path) -> dict[str, int]:
    """Every file and directory under ``root``, with file sizes (-1 for a directory)."""
    return {str(p.relative_to(root)): (-1 if p.is_dir() else p.stat().st_size) for p in root.rglob("*")}


async def table_names(uri: str) -> list[str]:
    engine = create_readonly_engine(StoreConfig.load(uri))
    try:
        async with engine.connect() as conn:
            return sorted(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def server_has_database(backend: str, name: str) -> bool:
    admin = dbadmin.server_url(backend)
    query = (
        "SELECT datname FROM pg_database WHERE datname = :name"
        if backend == "postgresql"
        else "SELECT schema_name FROM information_schema.schemata WHERE schema_name = :name"
    )
    engine = create_readonly_engine(StoreConfig.load(admin))
    try:
        async with engine.connect() as conn:
            return (await conn.scalar(text(query), {"name": name})) is not None
    finally:
        await engine.dispose()


def empty_database(backend: str, db_uri: str) -> str:
    """``db_uri`` as an existing database without tables (SQLite: a file with a header, in WAL mode)."""
    if backend == "sqlite":
        path = make_url(db_uri).database or ""
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA user_version = 7")  # writes the header: a real, table-less database file
        conn.close()
        assert os.path.getsize(path) > 0
    return db_uri


@pytest.mark.parametrize("action", READ_ONLY)
def test_missing_sqlite_file_is_no_database_and_nothing_is_created(
    action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep.txt").write_text("x")
    before = tree(tmp_path)
    for target in (tmp_path / "nonexist" / "x.db", tmp_path / "x.db"):  # missing directory; missing file only
        code, out, err = run_cli(capsys, "db", action, f"sqlite:///{target}")
        assert (code, out) == (2, "")
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("asyncstore: error: ")
        assert f"no database at {target}" in lines[0]
        assert tree(tmp_path) == before


def test_missing_sqlite_file_in_a_real_process(tmp_path: Path) -> None:
    target = tmp_path / "nonexist" / "x.db"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSTORE_")}
    result = subprocess.run(
        [sys.executable, "-m", "asyncstore.cli", "db", "check", f"sqlite:///{target}"],
        capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert f"no database at {target}" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_default_uri_creates_no_database_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ASYNCSTORE_DATABASE_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    for action in READ_ONLY:
        code, _, err = run_cli(capsys, "db", action)  # sqlite:///asyncstore.db
        assert code == 2 and f"no database at {tmp_path / 'asyncstore.db'}" in err
    assert list(tmp_path.iterdir()) == []


def test_zero_byte_sqlite_file_is_an_empty_database_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    uri = f"sqlite:///{path}"
    code, out, err = run_cli(capsys, "db", "check", uri)
    assert (code, err) == (1, "") and "none (an empty database): out of date" in out
    code, out, err = run_cli(capsys, "db", "current", uri)
    assert (code, err) == (0, "") and "is at revision none (an empty database)" in out
    # Read-only: no WAL switch (which would write a header), no journal, no table.
    assert tree(tmp_path) == {"empty.db": 0}


async def test_library_reads_create_no_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "x.db"
    engine = get_engine(f"sqlite:///{missing}")
    assert await migrate.current_revision(engine) is None
    with pytest.raises(SchemaOutOfDate, match=f"no database at {missing}"):
        await migrate.verify(engine)
    assert list(tmp_path.iterdir()) == []

    in_missing_folder = tmp_path / "typo" / "x.db"  # the engine makes its folder only on connect
    engine = get_engine(f"sqlite:///{in_missing_folder}")
    assert await migrate.current_revision(engine) is None
    with pytest.raises(SchemaOutOfDate, match=f"no database at {in_missing_folder}"):
        await migrate.verify(engine)
    assert list(tmp_path.iterdir()) == []

    empty = tmp_path / "empty.db"
    empty.touch()
    engine = get_engine(f"sqlite:///{empty}")  # a read-write engine: its connections switch to WAL
    assert await migrate.current_revision(engine) is None
    with pytest.raises(SchemaOutOfDate, match=r"none \(an empty database\)"):
        await migrate.verify(engine)
    assert tree(tmp_path) == {"empty.db": 0}


async def test_readonly_engine_refuses_a_missing_file_and_writes(tmp_path: Path) -> None:
    with pytest.raises(DatabaseConnectError, match=f"no database at {tmp_path / 'x.db'}"):
        create_readonly_engine(StoreConfig.load(f"sqlite:///{tmp_path / 'x.db'}"))
    path = tmp_path / "odd name#%.db"  # characters with a meaning in a SQLite URI
    path.touch()
    engine = create_readonly_engine(StoreConfig.load(f"sqlite:///{path}"))
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() != "wal"
            with pytest.raises(Exception, match="readonly"):
                await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    finally:
        await engine.dispose()
    assert tree(tmp_path) == {"odd name#%.db": 0}


@pytest.mark.parametrize("action", READ_ONLY)
def test_existing_database_without_tables_reports_empty_and_gets_no_table(
    backend: str, db_uri: str, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = empty_database(backend, db_uri)
    sqlite_path = Path(make_url(uri).database or "") if backend == "sqlite" else None
    content = sqlite_path.read_bytes() if sqlite_path else b""
    code, out, err = run_cli(capsys, "db", action, uri)
    assert err == "" and "is at revision none (an empty database)" in out
    assert code == (1 if action == "check" else 0)
    assert asyncio.run(table_names(uri)) == []  # no alembic_version
    if sqlite_path:
        assert sqlite_path.read_bytes() == content


async def test_library_reads_of_a_database_without_tables_create_no_table(backend: str, db_uri: str) -> None:
    uri = empty_database(backend, db_uri)
    sqlite_path = Path(make_url(uri).database or "") if backend == "sqlite" else None
    content = sqlite_path.read_bytes() if sqlite_path else b""
    assert await migrate.current_revision(get_engine(uri)) is None
    with pytest.raises(SchemaOutOfDate, match=r"none \(an empty database\)"):
        await migrate.verify(get_engine(uri))
    assert await table_names(uri) == []  # no alembic_version
    if sqlite_path:
        assert sqlite_path.read_bytes() == content


@pytest.mark.parametrize("action", READ_ONLY)
def test_missing_database_is_exit_2_naming_it_and_is_not_created(
    backend: str, tmp_path: Path, action: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASYNCSTORE_CONNECT_RETRIES", "1")
    monkeypatch.setenv("ASYNCSTORE_CONNECT_BACKOFF", "0.01")
    name = f"asyncstore_missing_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / name / 'x.db'}"
    else:
        uri = dbadmin.server_url(backend).set(database=name).render_as_string(hide_password=False)
        assert not asyncio.run(server_has_database(backend, name))
    code, out, err = run_cli(capsys, "db", action, uri)
    assert (code, out) == (2, "")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncstore: error: ") and name in lines[0], err
    if backend == "sqlite":
        assert list(tmp_path.iterdir()) == []
    else:
        assert not asyncio.run(server_has_database(backend, name))
