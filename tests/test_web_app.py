"""The README's web app ("Using it from a web app"), served by uvicorn, under a web app's load.

The app is the README's code block as printed, run by uvicorn in a process of its
own; 64 HTTP clients (httpx) make the mixed load of ``asyncstore bench --workload
mixed``: ``GET /runs/{id}`` and, one request in five, ``POST /runs/{id}/metrics``
of 100 metrics. Every request must answer as documented (200 or 204, never a 500),
reads must answer while writes wait for a lock, and on PostgreSQL and MariaDB
reads must keep answering 200 while the app's server sessions are killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from tests import dbadmin
from tests.faults import admin
from tests.helpers import closed_port, needs_server, readme_python

CLIENTS = 64
WRITE_EVERY = 5
METRICS = 100
READ_RUNS = 16
WRITE_RUNS = 16
KILL_EVERY = 0.5
"""Seconds between two kills of all the app's sessions: more than a read's retries span
(``transaction_retries`` 3, backoff from 40 ms), so a read meets at most one or two kills."""


@pytest.fixture
async def runs(migrated_uri: str) -> dict[str, list[str]]:
    """Runs to read (named after their index) and runs to write to, made before the app starts."""
    async with AsyncStore.open(migrated_uri) as store:
        exp = await store.experiments.create("web")
        read = [(await store.runs.create(exp, run_name=f"read-{i}")).info.run_id for i in range(READ_RUNS)]
        write = [(await store.runs.create(exp, run_name=f"write-{i}")).info.run_id for i in range(WRITE_RUNS)]
    return {"read": read, "write": write}


@pytest.fixture
def app_url(migrated_uri: str, tmp_path: Path) -> Iterator[str]:
    """The README's app served by uvicorn on ``migrated_uri``; its log must show no error."""
    (tmp_path / "webapp.py").write_text(readme_python("Using it from a web app"), encoding="utf-8")
    port = closed_port()
    log = tmp_path / "uvicorn.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "webapp:app", "--app-dir", str(tmp_path),
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            env={**os.environ, "ASYNCSTORE_DATABASE_URI": migrated_uri},
            stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, server, log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "Traceback" not in log.read_text() and "ERROR" not in log.read_text(), log.read_text()


def _wait_until_serving(url: str, server: subprocess.Popen[Any], log: Path) -> None:
    for _ in range(300):
        if server.poll() is not None:
            pytest.fail(f"uvicorn exited with {server.returncode}: {log.read_text()}")
        try:
            httpx.get(url + "/runs/none", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"uvicorn did not answer within 30 s: {log.read_text()}")


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[httpx.AsyncClient]:
    # An idle connection is dropped by the client before uvicorn's keep-alive timeout
    # (5 s) closes it: with both at 5 s a request can race the server's close.
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS, keepalive_expiry=1.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        yield client


def _metrics(i: int) -> list[dict[str, Any]]:
    return [{"key": f"m{j}", "value": i + j / 1000, "timestamp": 1_000 + i, "step": i} for j in range(METRICS)]


async def _read(client: httpx.AsyncClient, runs: dict[str, list[str]], i: int) -> tuple[str, int, Any]:
    k = i % READ_RUNS
    response = await client.get(f"/runs/{runs['read'][k]}")
    ok = response.status_code == 200 and response.json()["name"] == f"read-{k}"
    return "read", response.status_code, ok or response.text


async def _write(client: httpx.AsyncClient, runs: dict[str, list[str]], i: int) -> tuple[str, int, Any]:
    response = await client.post(f"/runs/{runs['write'][i % WRITE_RUNS]}/metrics", json=_metrics(i))
    return "write", response.status_code, response.status_code == 204 or response.text


async def _mixed_load(url: str, runs: dict[str, list[str]], calls: int) -> list[tuple[str, int, Any]]:
    """``calls`` requests by 64 clients, one in five a write; each answer as (kind, status, True or body)."""
    answers: list[tuple[str, int, Any]] = []
    numbers = iter(range(calls))
    async with _client(url) as client:

        async def caller() -> None:
            for i in numbers:
                call = _write if i % WRITE_EVERY == WRITE_EVERY - 1 else _read
                answers.append(await call(client, runs, i))

        await asyncio.gather(*(caller() for _ in range(CLIENTS)))
    return answers


async def _check_writes_stored(uri: str, runs: dict[str, list[str]], calls: int) -> None:
    """Every acknowledged write is in the database: each metric's history has a step per write."""
    async with AsyncStore.open(uri) as store:
        for k, run_id in enumerate(runs["write"]):
            steps = [i for i in range(calls) if i % WRITE_EVERY == WRITE_EVERY - 1 and i % WRITE_RUNS == k]
            for key in ("m0", f"m{METRICS - 1}"):
                history = await store.runs.get_metric_history(run_id, key)
                assert sorted(m.step for m in history) == steps, (run_id, key)


async def test_the_readme_app_answers_a_mixed_load(
    app_url: str, runs: dict[str, list[str]], migrated_uri: str
) -> None:
    calls = 640
    answers = await _mixed_load(app_url, runs, calls)
    assert len(answers) == calls
    wrong = [answer for answer in answers if answer[2] is not True]
    assert not wrong, wrong[:5]
    assert sum(1 for kind, _, _ in answers if kind == "write") == calls // WRITE_EVERY
    await _check_writes_stored(migrated_uri, runs, calls)


@contextlib.asynccontextmanager
async def _writes_blocked(backend: str, uri: str, run_ids: list[str]) -> AsyncIterator[None]:
    """Another client holds the lock every write to ``run_ids`` needs (SQLite: the database's write lock)."""
    if backend == "sqlite":
        conn = sqlite3.connect(make_url(uri).database or "", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.rollback()
            conn.close()
    elif backend == "postgresql":
        async with dbadmin.pg_connection(make_url(uri)) as pg:
            async with pg.transaction():
                await pg.execute("SELECT 1 FROM runs WHERE run_uuid = ANY($1) FOR UPDATE", run_ids)
                yield
    else:
        async with dbadmin.mysql_cursor(make_url(uri)) as cur:
            await cur.execute("START TRANSACTION")
            marks = ", ".join(["%s"] * len(run_ids))
            await cur.execute(f"SELECT 1 FROM runs WHERE run_uuid IN ({marks}) FOR UPDATE", run_ids)
            try:
                yield
            finally:
                await cur.execute("ROLLBACK")


async def test_reads_answer_while_writes_wait_for_a_lock(
    app_url: str, runs: dict[str, list[str]], migrated_uri: str, backend: str
) -> None:
    waiting = 4
    async with _client(app_url) as client:
        async with _writes_blocked(backend, migrated_uri, runs["write"]):
            writes = [asyncio.ensure_future(_write(client, runs, i)) for i in range(waiting)]
            await asyncio.sleep(0.5)  # the writes reached the lock (a write that did not yet still may not pass)
            reads = await asyncio.gather(*(_read(client, runs, i) for i in range(3 * CLIENTS)))
            assert [ok for _, _, ok in reads if ok is not True] == []
            assert not any(write.done() for write in writes), [w.result() for w in writes if w.done()]
        answers = await asyncio.gather(*writes)
    assert [ok for _, _, ok in answers if ok is not True] == []


@needs_server
async def test_reads_keep_answering_while_the_app_sessions_are_killed(
    app_url: str, runs: dict[str, list[str]], migrated_uri: str
) -> None:
    calls = 1_280
    load = asyncio.ensure_future(_mixed_load(app_url, runs, calls))
    killed = 0
    while not load.done():  # as an operator or a failover would, again and again
        await asyncio.sleep(KILL_EVERY)
        killed += await admin.kill_all_sessions(migrated_uri)
    answers = await load
    assert killed > 0, "no session of the app was killed"
    assert not load.cancelled() and len(answers) == calls
    reads = [(status, ok) for kind, status, ok in answers if kind == "read"]
    assert [answer for answer in reads if answer[1] is not True] == []
    writes = [(status, ok) for kind, status, ok in answers if kind == "write"]
    assert [answer for answer in writes if answer[1] is not True] == []
    await _check_writes_stored(migrated_uri, runs, calls)
