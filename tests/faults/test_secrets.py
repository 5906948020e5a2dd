"""No password in any log record, exception message, traceback or repr.

Each case runs a failing (or working) path with a known password and searches
everything captured: every log record (message and formatted exception), every
exception of the chain (``str``, ``repr``, the formatted traceback) and the reprs of
the objects a caller holds.
"""

from __future__ import annotations

import gc
import logging
import traceback
import urllib.parse
from collections.abc import Iterable

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import URL, make_url

from asyncstore import AsyncStore, StoreConfig, StoreError, get_engine
from asyncstore.schema import experiments
from tests.helpers import closed_port, needs_server

PASSWORD = "S3cr3t-h0rse/b@tt:ery%"
"""The known password: with characters that need URL-quoting, so both spellings are searched."""
SPELLINGS = (PASSWORD, urllib.parse.quote(PASSWORD, safe=""), urllib.parse.quote_plus(PASSWORD))


def _with_password(uri: str, *, username: str | None = None, database: str | None = None, port: int | None = None) -> str:
    url = make_url(uri)
    url = url.set(password=PASSWORD, username=username or url.username)
    if database is not None:
        url = url.set(database=database)
    if port is not None:
        url = url.set(port=port)
    return url.render_as_string(hide_password=False)


def _texts_of(exc: BaseException) -> Iterable[str]:
    yield "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        yield repr(current.args)
        stack.extend(e for e in (current.__cause__, current.__context__, getattr(current, "orig", None)) if e)


def _leaks(caplog: pytest.LogCaptureFixture, *texts: str) -> list[str]:
    everything = list(texts)
    for record in caplog.records:
        everything.append(record.getMessage())
        everything.append(repr(record.args))
        if record.exc_info and record.exc_info[1] is not None:
            everything.extend(_texts_of(record.exc_info[1]))
    return [text[:300] for text in everything if any(s in text for s in SPELLINGS)]


@pytest.fixture(autouse=True)
def _capture_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


@needs_server
async def test_refused_login_and_unknown_database(migrated_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    """Promise: a login the server refuses (unknown user on PostgreSQL, a wrong password
    for root on MariaDB) and an unknown database both raise a StoreError, and neither
    the error chain nor any log record contains the password."""
    texts: list[str] = []
    refused = _with_password(migrated_uri, username="asyncstore_no_such_user")
    unknown_db = _with_password(migrated_uri, database="asyncstore_no_such_database")
    for uri in (refused, unknown_db):
        with pytest.raises(StoreError) as info:
            await AsyncStore.open(uri, connect_retries=1, connect_backoff=0.01)
        texts.extend(_texts_of(info.value))
    assert _leaks(caplog, *texts) == []


@needs_server
async def test_unreachable_server_with_retries(migrated_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    """Promise: connecting with a password to a port nobody listens on logs each retry
    and then raises TEMPORARILY_UNAVAILABLE, and neither the warnings nor the error
    contain the password."""
    uri = _with_password(migrated_uri, port=closed_port())
    with pytest.raises(StoreError) as info:
        await AsyncStore.open(uri, connect_retries=2, connect_backoff=0.01)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "***" in warnings[0].getMessage()
    assert _leaks(caplog, *_texts_of(info.value)) == []


async def test_working_store_reprs_and_echo(migrated_uri: str, backend: str, caplog: pytest.LogCaptureFixture) -> None:
    """Promise: with a password in the URI (PostgreSQL's trust login ignores it; SQLite
    has none), an open store with SQL echo on logs statements, and the reprs of the
    store, its config, its engine and its URL, and the warning of a store never
    closed, all hide the password."""
    if backend == "mysql":  # root has no password on the test server: it would be refused
        uri = migrated_uri
        config_text = repr(StoreConfig.load(_with_password(migrated_uri)))
    else:
        uri = _with_password(migrated_uri) if backend == "postgresql" else migrated_uri
        config_text = ""
    async with AsyncStore.open(uri, echo=True) as store:
        await store.uow.run(lambda c: c.execute(insert(experiments), [{"name": "x"}]))
        texts = [repr(store), repr(store.config), str(store.config), repr(store.engine), str(store.engine.url), config_text]
    engine = get_engine(_with_password(migrated_uri) if backend != "sqlite" else migrated_uri)
    texts += [repr(engine), repr(engine.sync_engine.pool)]
    unclosed = await AsyncStore.open(uri)
    unclosed_engine = unclosed.engine
    with pytest.warns(ResourceWarning) as warned:
        del unclosed
        gc.collect()
    await unclosed_engine.dispose()
    texts += [str(w.message) for w in warned]
    assert any("INSERT INTO experiments" in r.getMessage() for r in caplog.records)
    assert _leaks(caplog, *texts) == []
    await engine.dispose()


@pytest.mark.parametrize(
    "uri",
    [
        f"postgresql://u:{urllib.parse.quote(PASSWORD, safe='')}@db.example:notaport/x",
        f"oracle://u:{urllib.parse.quote(PASSWORD, safe='')}@db.example/x",
        f"postgresql://u:{urllib.parse.quote(PASSWORD, safe='')}@db.example/x?pool_size=oops",
    ],
    ids=["bad-port", "unsupported-scheme", "odd-query"],
)
def test_configuration_errors(uri: str, caplog: pytest.LogCaptureFixture) -> None:
    """Promise: a URI that cannot be used (a port that is not a number, an unsupported
    scheme) or bad options given with a password-bearing URI raise a
    ConfigurationError (INVALID_PARAMETER), never a bare parsing error, and its
    message says what is wrong without the password."""
    from asyncstore import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        StoreConfig.load(uri, pool_size=-5)
    assert _leaks(caplog, *_texts_of(info.value)) == []


def test_environment_uri_with_bad_option(caplog: pytest.LogCaptureFixture) -> None:
    """Promise: a password-bearing ``ASYNCSTORE_DATABASE_URI`` with a bad
    ``ASYNCSTORE_POOL_TIMEOUT`` raises a ConfigurationError naming the variable, and
    neither it nor the configuration's repr shows the password."""
    from asyncstore import ConfigurationError

    uri = URL.create("postgresql", username="u", password=PASSWORD, host="db.example", database="x")
    environ = {"ASYNCSTORE_DATABASE_URI": uri.render_as_string(hide_password=False), "ASYNCSTORE_POOL_TIMEOUT": "soon"}
    with pytest.raises(ConfigurationError, match="ASYNCSTORE_POOL_TIMEOUT") as info:
        StoreConfig.load(environ=environ)
    good = StoreConfig.load(environ={"ASYNCSTORE_DATABASE_URI": environ["ASYNCSTORE_DATABASE_URI"]})
    assert good.uri != good.safe_uri  # the password is kept, only hidden
    assert _leaks(caplog, good.uri) != []  # the search does find it where it is
    assert _leaks(caplog, *_texts_of(info.value), repr(good), str(good), good.safe_uri) == []
