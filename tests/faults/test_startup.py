"""The server unreachable at start-up, or gone for a while after it.

A :class:`~tests.faults.proxy.LateProxy` stands between the store and the real server:
nothing listens on its port until it is started, so connection attempts are refused
exactly as when a server is still booting or failing over.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore, TemporarilyUnavailable
from asyncstore.schema import experiments
from tests.faults.proxy import LateProxy
from tests.helpers import count_rows, needs_server

ENGINE_LOG = "asyncstore.engines"


def _via(proxy: LateProxy, uri: str) -> str:
    return make_url(uri).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def _retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == ENGINE_LOG and r.levelno == logging.WARNING]


@needs_server
async def test_open_waits_for_a_server_that_comes_up_late(
    migrated_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Promise: while the server refuses connections for about a second, ``AsyncStore.open``
    keeps trying with its backoff (each failed attempt logged as a warning) and then
    opens normally; the store works, and nothing was written before it could."""
    url = make_url(migrated_uri)
    proxy = LateProxy(url.host or "127.0.0.1", url.port or 0)
    caplog.set_level(logging.WARNING, logger=ENGINE_LOG)
    starter = asyncio.ensure_future(proxy.start_after(1.0))
    try:
        async with AsyncStore.open(_via(proxy, migrated_uri), connect_retries=8, connect_backoff=0.1) as store:
            assert starter.done() and proxy.accepted >= 1
            warnings = _retry_warnings(caplog)
            assert warnings and "attempt 1 of 9" in warnings[0]
            await store.uow.run(lambda c: c.execute(insert(experiments), [{"name": "late"}]))
            assert await count_rows(store, experiments) == 1
    finally:
        await starter
        await proxy.stop()


@needs_server
async def test_open_gives_up_after_the_configured_attempts(
    migrated_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Promise: a server unreachable for longer than the retry policy gives a
    TEMPORARILY_UNAVAILABLE error after exactly ``connect_retries + 1`` attempts (each
    retry logged), with a message that says the database is unavailable and names the
    host it tried."""
    url = make_url(migrated_uri)
    proxy = LateProxy(url.host or "127.0.0.1", url.port or 0)  # never started
    caplog.set_level(logging.WARNING, logger=ENGINE_LOG)
    with pytest.raises(TemporarilyUnavailable) as info:
        await asyncio.wait_for(
            AsyncStore.open(_via(proxy, migrated_uri), connect_retries=2, connect_backoff=0.05), timeout=60
        )
    warnings = _retry_warnings(caplog)
    assert ["attempt 1 of 3" in warnings[0], "attempt 2 of 3" in warnings[1]] == [True, True]
    assert len(warnings) == 2
    assert info.value.message.startswith("the database is temporarily unavailable")
    assert "127.0.0.1" in info.value.message
    assert info.value.http_status == 503


@needs_server
async def test_server_gone_after_open_then_back(migrated_uri: str) -> None:
    """Promise: when the server vanishes under an open store (every connection cut, new
    ones refused) calls fail with TEMPORARILY_UNAVAILABLE, nothing half-written remains,
    and once the server is back the same store works again without being reopened."""
    url = make_url(migrated_uri)
    proxy = LateProxy(url.host or "127.0.0.1", url.port or 0)
    await proxy.start()
    try:
        async with AsyncStore.open(
            _via(proxy, migrated_uri), connect_retries=1, connect_backoff=0.05, transaction_retries=1
        ) as store:
            await store.uow.run(lambda c: c.execute(insert(experiments), [{"name": "before"}]))
            await proxy.stop()
            with pytest.raises(TemporarilyUnavailable):
                await store.uow.run(
                    lambda c: c.execute(insert(experiments), [{"name": f"during-{i}"} for i in range(10)])
                )
            assert store.engine.sync_engine.pool.checkedout() == 0
            await proxy.start()
            await store.uow.run(lambda c: c.execute(insert(experiments), [{"name": "after"}]))
            assert await count_rows(store, experiments) == 2
            assert await count_rows(store, experiments, experiments.c.name.like("during-%")) == 0
    finally:
        await proxy.stop()
