"""The ``asyncstore`` command line, run in a subprocess as a user would."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asyncstore import cli, migrate
from tests.helpers import closed_port

PASSWORD = "cli-S3cret"


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSTORE_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "asyncstore.cli", *args],
        capture_output=True, text=True, env=environ, cwd=cwd, timeout=120,
    )


class InProcess:
    """``asyncstore`` run in this process (much faster than a subprocess); same result shape."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        code = cli.main(list(args))
        captured = self.capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def test_check_upgrade_current_downgrade_cycle(
    backend: str, db_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    head = migrate.head_revision()
    if backend == "sqlite":  # `db check` creates no database: start from an existing, empty (0-byte) file
        Path(db_uri.removeprefix("sqlite:///")).touch()
    empty = run("db", "check", db_uri)  # one real process; the rest in-process
    cmd = InProcess(capsys)
    assert empty.returncode == 1 and "empty database" in empty.stdout and "asyncstore db upgrade" in empty.stdout
    first = cmd("db", "upgrade", db_uri, "--revision", "0001_initial")
    assert first.returncode == 0 and "0001_initial" in first.stdout
    behind = cmd("db", "check", db_uri)
    assert behind.returncode == 1 and f"0001_initial (head is {head})" in behind.stdout
    up = cmd("db", "upgrade", db_uri)
    assert (up.returncode, up.stderr) == (0, "") and f"{head} (head)" in up.stdout
    assert cmd("db", "check", db_uri).returncode == 0
    current = cmd("db", "current", db_uri)
    assert current.returncode == 0 and f"revision {head} (head)" in current.stdout
    down = cmd("db", "downgrade", db_uri, "base")
    assert down.returncode == 0 and "empty database" in down.stdout
    assert cmd("db", "check", db_uri).returncode == 1


def test_uri_defaults_to_the_configured_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cmd = InProcess(capsys)
    env_db = tmp_path / "env.db"
    monkeypatch.setenv("ASYNCSTORE_DATABASE_URI", f"sqlite:///{env_db}")
    assert cmd("db", "upgrade").returncode == 0
    assert env_db.is_file()
    monkeypatch.delenv("ASYNCSTORE_DATABASE_URI")
    monkeypatch.chdir(tmp_path)
    assert cmd("db", "upgrade").returncode == 0  # sqlite:///asyncstore.db in the working directory
    assert (tmp_path / "asyncstore.db").is_file()
    assert cmd("db", "check").returncode == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["db", "current", f"oracle://u:{PASSWORD}@h/db"], "not supported"),
        (["db", "current", f"postgresql://u:{PASSWORD}@h:port/db"], "could not parse"),
        (["db", "check", f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port()}/db"], "temporarily unavailable"),
        (["db", "upgrade", f"mysql://u:{PASSWORD}@127.0.0.1:{closed_port()}/db"], "temporarily unavailable"),
        (["db", "current", "postgresql://asyncstore_no_such_role:" + PASSWORD + "@127.0.0.1/postgres"], "refused"),
        (["db", "current", f"mysql://root:{PASSWORD}@127.0.0.1/test"], "refused"),
    ],
)
def test_failures_are_one_line_exit_2_no_password(
    args: list[str], expected: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASYNCSTORE_CONNECT_RETRIES", "1")
    monkeypatch.setenv("ASYNCSTORE_CONNECT_BACKOFF", "0.01")
    result = InProcess(capsys)(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asyncstore: error:") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr


def test_unreachable_server_in_a_real_process(tmp_path: Path) -> None:
    uri = f"postgresql://u:{PASSWORD}@127.0.0.1:{closed_port()}/db"
    result = run("db", "upgrade", uri, env={"ASYNCSTORE_CONNECT_RETRIES": "2", "ASYNCSTORE_CONNECT_BACKOFF": "0.01"})
    assert result.returncode == 2 and result.stdout == ""
    # One line: the connect-retry warnings are not printed without -v.
    assert len(result.stderr.strip().splitlines()) == 1 and "temporarily unavailable" in result.stderr
    assert PASSWORD not in result.stderr
    unknown = run("db", "upgrade", f"sqlite:///{tmp_path}/x.db", "--revision", "nope")
    assert unknown.returncode == 2 and "known revisions" in unknown.stderr and "Traceback" not in unknown.stderr


@pytest.mark.parametrize("command", [[], ["db"], ["db", "upgrade"], ["db", "downgrade"], ["db", "current"], ["db", "check"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: asyncstore") and ("URI" in out or "COMMAND" in out or "ACTION" in out)


def test_downgrade_requires_uri_and_revision(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["db", "downgrade"])
    assert info.value.code == 2 and "URI" in capsys.readouterr().err
    target = tmp_path / "x.db"
    # REVISION may be left out only with --indexes: without, exit 2 before anything is opened.
    assert cli.main(["db", "downgrade", f"sqlite:///{target}"]) == 2
    assert "needs a REVISION" in capsys.readouterr().err and not target.exists()


def test_a_new_subcommand_plugs_in_with_one_registrar(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    async def hello(args: argparse.Namespace) -> int:
        print(f"hello {args.name}")
        return 3

    def add_hello_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("hello", help="say hello")
        parser.add_argument("name")
        parser.set_defaults(handler=hello)

    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, add_hello_command])
    assert cli.main(["hello", "bench"]) == 3
    assert capsys.readouterr().out == "hello bench\n"


def test_a_revision_asyncstore_does_not_know_is_named_as_such(
    migrated_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database whose Alembic revision is not asyncstore's (MLflow's head here) is not
    called out of date with advice that leads nowhere: `db check`, `db current` and
    opening a store say whose it may be and that `asyncstore db upgrade` cannot migrate it."""
    import asyncio

    from sqlalchemy import text

    from asyncstore import AsyncStore, SchemaOutOfDate

    async def set_revision(revision: str) -> None:
        async with AsyncStore.open(migrated_uri) as store:
            await store.uow.run(
                lambda conn: conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
            )

    async def open_store() -> None:
        async with AsyncStore.open(migrated_uri):
            pass

    asyncio.run(set_revision("dc11669786a5"))
    cmd = InProcess(capsys)
    note = "dc11669786a5, which is not one of asyncstore's (0001_initial, "
    check = cmd("db", "check", migrated_uri)
    assert check.returncode == 1 and note in check.stdout and "cannot migrate it" in check.stdout, check
    assert "run `asyncstore db upgrade`" not in check.stdout
    current = cmd("db", "current", migrated_uri)
    assert current.returncode == 0 and note in current.stdout
    with pytest.raises(SchemaOutOfDate, match=r"is at revision dc11669786a5, which is not one of asyncstore's"):
        asyncio.run(open_store())
