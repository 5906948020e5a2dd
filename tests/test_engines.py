"""The engine cache, pool options, connect retry and per-dialect connection set-up."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import literal, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from asyncstore import DatabaseConnectError, InternalError, InvalidState, TemporarilyUnavailable, dispose_engines
from asyncstore import engines as engines_module
from asyncstore.engines import create_engine, engine_state, get_engine
from asyncstore.errors import ConfigurationError
from asyncstore.config import StoreConfig
from asyncstore.uow import UnitOfWork
from tests import dbadmin
from tests.helpers import closed_port, mysql_only

PASSWORD = "n0t-Th3-pw"


async def _select_one(engine: AsyncEngine) -> int:
    return int(await UnitOfWork(engine).run(lambda c: c.scalar(text("SELECT 1")), write=False))


# --- the cache -----------------------------------------------------------------------


async def test_same_engine_for_same_loop_uri_and_options(db_uri: str) -> None:
    engine = get_engine(db_uri, pool_size=3)
    assert get_engine(db_uri, pool_size=3) is engine
    assert get_engine(db_uri, pool_size=4) is not engine
    assert get_engine(db_uri, pool_size=3, echo=True) is not engine
    assert await _select_one(engine) == 1


async def test_equivalent_uris_share_an_engine(tmp_path: Path) -> None:
    assert get_engine(f"sqlite:///{tmp_path}/a.db") is get_engine(f"sqlite+aiosqlite:///{tmp_path}/a.db")
    assert get_engine(f"sqlite:///{tmp_path}/a.db") is not get_engine(f"sqlite:///{tmp_path}/b.db")


async def test_concurrent_first_calls_create_one_engine(db_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[AsyncEngine] = []
    original = engines_module._create_engine

    def counting(config: StoreConfig) -> AsyncEngine:
        created.append(original(config))
        return created[-1]

    monkeypatch.setattr(engines_module, "_create_engine", counting)

    async def first_call() -> AsyncEngine:
        await asyncio.sleep(0)
        return get_engine(db_uri, pool_size=2)

    got = await asyncio.gather(*(first_call() for _ in range(20)))
    assert len(created) == 1 and all(engine is created[0] for engine in got)
    results = await asyncio.gather(*(_select_one(engine) for engine in got))
    assert results == [1] * 20


def test_new_loop_gets_its_own_engine_and_both_runs_work(db_uri: str) -> None:
    async def use() -> tuple[AsyncEngine, asyncio.AbstractEventLoop, int]:
        engine = get_engine(db_uri)
        return engine, asyncio.get_running_loop(), await _select_one(engine)

    first, loop1, one = asyncio.run(use())  # no dispose: asyncio.run's shutdown does it
    second, loop2, again = asyncio.run(use())
    assert (one, again) == (1, 1)
    assert first is not second
    assert loop1 not in engines_module._engines and loop2 not in engines_module._engines
    # Closed politely at loop shutdown: nothing left checked in or out of the old pool.
    assert first.sync_engine.pool.checkedin() == 0 and first.sync_engine.pool.checkedout() == 0


def test_engines_of_a_loop_closed_without_shutdown_are_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = f"sqlite:///{tmp_path}/x.db"
    loop = asyncio.new_event_loop()

    async def make() -> AsyncEngine:
        return get_engine(uri)

    old = loop.run_until_complete(make())
    loop.close()  # no shutdown_asyncgens: the engine could not be disposed

    async def later() -> AsyncEngine:
        engine = get_engine(uri)
        await _select_one(engine)
        return engine

    with caplog.at_level(logging.WARNING, logger="asyncstore.engines"):
        new = asyncio.run(later())
    assert new is not old
    assert loop not in engines_module._engines
    assert any("event loop was closed" in r.getMessage() for r in caplog.records)


async def test_dispose_engines_closes_the_loops_engines(db_uri: str) -> None:
    engine = get_engine(db_uri)
    assert await _select_one(engine) == 1
    assert engine.sync_engine.pool.checkedin() >= 1
    await dispose_engines()
    assert engine.sync_engine.pool.checkedin() == 0
    assert get_engine(db_uri) is not engine


def test_get_engine_needs_a_running_loop() -> None:
    with pytest.raises(InvalidState, match="running event loop"):
        get_engine("sqlite://")


async def test_engine_not_made_by_asyncstore_is_refused() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    foreign = create_async_engine("sqlite+aiosqlite://")
    try:
        with pytest.raises(InvalidState, match="not created by asyncstore"):
            UnitOfWork(foreign)
    finally:
        await foreign.dispose()


# --- options reach the engine ----------------------------------------------------------


async def test_pool_options_reach_the_pool(db_uri: str) -> None:
    engine = get_engine(db_uri, pool_size=3, max_overflow=2, pool_timeout=4.5, pool_recycle=77, pool_pre_ping=True)
    pool: Any = engine.sync_engine.pool
    assert (pool.size(), pool._max_overflow, pool.timeout(), pool._recycle, pool._pre_ping) == (3, 2, 4.5, 77, True)
    assert isinstance(get_engine(db_uri, poolclass="NullPool").sync_engine.pool, NullPool)
    assert get_engine(db_uri, echo=True).echo is True


async def test_mysql_tls_files_reach_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    engine = get_engine("mysql://u@127.0.0.1:1/db", mysql_ssl_ca=str(cert), mysql_ssl_cert=str(cert),
                        mysql_ssl_key=str(key), connect_retries=0)
    seen: dict[str, Any] = {}

    def capture(*cargs: Any, **cparams: Any) -> None:
        seen.update(cparams)
        raise ConnectionRefusedError("captured, not connecting")

    monkeypatch.setattr(engine.sync_engine.dialect, "connect", capture)
    with pytest.raises(TemporarilyUnavailable):
        await _select_one(engine)
    assert isinstance(seen["ssl"], ssl.SSLContext), seen

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="mysql_ssl_ca.*bad.pem.*PEM"):
        get_engine("mysql://u@h/db", mysql_ssl_ca=str(bad))


# --- connecting ------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
async def test_unreachable_server_is_retried_with_backoff(scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    uri = f"{scheme}://user:{PASSWORD}@127.0.0.1:{closed_port()}/db"
    engine = get_engine(uri, connect_retries=3, connect_backoff=0.01, transaction_retries=2)
    with caplog.at_level(logging.DEBUG, logger="asyncstore"):
        with pytest.raises(TemporarilyUnavailable, match="cannot reach|temporarily unavailable") as info:
            await _select_one(engine)
    retries = [r for r in caplog.records if r.name == "asyncstore.engines" and "attempt" in r.getMessage()]
    # 4 attempts = 3 retries, each wait twice the one before; no second layer of retries on top.
    assert [r.args[2] for r in retries] == [1, 2, 3]  # type: ignore[index]
    assert [r.args[-1] for r in retries] == [0.01, 0.02, 0.04]  # type: ignore[index]
    assert not [r for r in caplog.records if r.name == "asyncstore.uow"]
    assert info.value.__cause__ is not None
    texts = [str(info.value), repr(info.value)] + [r.getMessage() for r in caplog.records]
    assert all(PASSWORD not in t for t in texts)


def _refused_uris(backend: str, tmp_path: Path) -> list[str]:
    if backend == "sqlite":
        return [f"sqlite:///{tmp_path}"]  # a directory: SQLITE_CANTOPEN
    server = dbadmin.server_url(backend)
    unknown_db = server.set(database="asyncstore_no_such_db").render_as_string(hide_password=False)
    if backend == "postgresql":  # trust authentication here: an unknown role is the credential error
        bad_login = server.set(username="asyncstore_no_such_role", password=PASSWORD)
    else:
        bad_login = server.set(password=PASSWORD)
    return [unknown_db, bad_login.render_as_string(hide_password=False)]


async def test_wrong_credentials_or_unknown_database_fail_at_once(
    backend: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for uri in _refused_uris(backend, tmp_path):
        engine = get_engine(uri, connect_retries=5, connect_backoff=5.0)
        threads_before = set(threading.enumerate())
        with caplog.at_level(logging.DEBUG, logger="asyncstore"):
            with pytest.raises(DatabaseConnectError) as info:
                await _select_one(engine)
        # aiosqlite stops the worker thread of a failed connect without waiting for it;
        # let it finish while this loop can still take its answer.
        for thread in set(threading.enumerate()) - threads_before:
            await asyncio.to_thread(thread.join, 10)
        assert not [r for r in caplog.records if "attempt" in r.getMessage()], "a permanent failure was retried"
        assert "refused" in str(info.value) or "open" in str(info.value)
        assert PASSWORD not in str(info.value)


# --- per-dialect set-up ------------------------------------------------------------------


async def test_regexp_works_on_every_backend(store: Any) -> None:
    async def probe(conn: Any) -> list[bool]:
        rows = [await conn.scalar(select(literal(v).regexp_match("^ab+c$"))) for v in ("abbc", "abd")]
        return [bool(r) for r in rows]

    assert await store.uow.run(probe, write=False) == [True, False]


async def test_sqlite_connection_setup(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.db"  # parent folders do not exist yet
    engine = get_engine(f"sqlite:///{path}")

    async def pragmas(conn: Any) -> tuple[Any, ...]:
        return tuple(
            [await conn.scalar(text(f"PRAGMA {name}")) for name in ("foreign_keys", "journal_mode", "busy_timeout")]
        )

    assert await UnitOfWork(engine).run(pragmas, write=False) == (1, "wal", 30_000)
    assert path.is_file()
    assert engine_state(engine).write_lock is not None


async def test_too_old_sqlite_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(InternalError, match=r"SQLite 3\.31\.1 is too old.*3\.35\.0 or newer"):
        get_engine(f"sqlite:///{tmp_path}/old.db")
    with pytest.raises(InternalError, match="too old"):
        create_engine(StoreConfig.load(f"sqlite:///{tmp_path}/old.db"))


@mysql_only
async def test_mysql_connections_are_rolled_back_on_return_only_inside_a_transaction(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool's reset sends ROLLBACK only when the server says a transaction is open."""
    import aiomysql

    rollbacks: list[bool] = []
    real = aiomysql.Connection.rollback

    async def counted(self: Any) -> None:
        rollbacks.append(self.get_transaction_status())
        await real(self)

    monkeypatch.setattr(aiomysql.Connection, "rollback", counted)
    exp = await store.experiments.create("reset")
    await store.experiments.get(exp)  # a read, committed: nothing to roll back
    await store.experiments.set_tag(exp, "k", "v")  # a write, committed: nothing to roll back
    assert rollbacks == []

    conn = await store.engine.connect()  # a transaction left open on the driver connection
    raw = await conn.get_raw_connection()
    async with raw.driver_connection.cursor() as cursor:
        await cursor.execute("START TRANSACTION")
        await cursor.execute("UPDATE experiments SET name = 'changed' WHERE experiment_id = %s", (int(exp),))
    await conn.close()  # the pool's reset rolls it back
    assert rollbacks == [True]
    assert (await store.experiments.get(exp)).name == "reset"
