"""Databases that MLflow manages, made by the real ``mlflow`` package (the ``mlflow``
extra): what asyncstore says of them and that it leaves them as they are."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore, SchemaOutOfDate
from asyncstore.bench.database import ScratchDatabase
from asyncstore.bench.mlflow_peer import MlflowPeer
from asyncstore.config import Backend
from tests import dbadmin
from tests.test_cli import InProcess

MLFLOW_HEAD = "dc11669786a5"
"""The Alembic head of MLflow 3.17 (the ``mlflow`` extra pins 3.17.2)."""


def _mlflow_creates(uri: str, backend: str) -> None:
    """Create and migrate MLflow's schema in ``uri`` with MLflow's own store, as an
    MLflow server does on first use."""
    scratch = ScratchDatabase(backend=Backend(backend), url=make_url(uri), name=make_url(uri).database or "")
    peer = MlflowPeer(scratch)

    async def create() -> None:
        await peer.open()
        await peer.close()

    asyncio.run(create())


@pytest.fixture
def mlflow_uri(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database that MLflow created and migrated (MySQL: the server's default
    collation, as MLflow's databases have it)."""
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative
    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        uri = dbadmin.create_database(backend, f"asyncstore_test_{uuid.uuid4().hex[:12]}", server_collation=True)
    try:
        _mlflow_creates(uri, backend)
        yield uri
    finally:
        if backend != "sqlite":
            dbadmin.drop_database(backend, uri)


def test_an_mlflow_database_is_named_and_left_as_it_is(
    backend: str, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`db check`, `db current` and opening a store name MLflow's revision as not
    asyncstore's, without advice that leads nowhere; `db upgrade` refuses it in one line
    and changes nothing: MLflow's own store still opens the database afterwards."""
    cmd = InProcess(capsys)
    note = f"is at revision {MLFLOW_HEAD}, which is not one of asyncstore's"
    check = cmd("db", "check", mlflow_uri)
    assert check.returncode == 1 and note in check.stdout and "cannot migrate it" in check.stdout, check
    assert "run `asyncstore db upgrade`" not in check.stdout
    assert note in cmd("db", "current", mlflow_uri).stdout

    async def open_store() -> None:
        async with AsyncStore.open(mlflow_uri):
            pass

    with pytest.raises(SchemaOutOfDate, match=note):
        asyncio.run(open_store())
    upgrade = cmd("db", "upgrade", mlflow_uri)
    assert upgrade.returncode == 2 and len(upgrade.stderr.strip().splitlines()) == 1, upgrade
    assert note in upgrade.stderr and "cannot migrate it" in upgrade.stderr
    assert note in cmd("db", "current", mlflow_uri).stdout
    _mlflow_creates(mlflow_uri, backend)  # MLflow refuses any revision but its head: still its own
