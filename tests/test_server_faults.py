"""``asyncstore serve`` under faults: the promise is that every span whose request got a
200 is in the database afterwards, and that the exporter's retries bring the rest.

* The database's sessions killed again and again while concurrent clients post
  (PostgreSQL ``pg_terminate_backend``, MariaDB ``KILL CONNECTION``; SQLite has no
  server session to kill, so the case runs on the backends marked ``needs_server``).
* The server process SIGKILLed while clients post, frozen (SIGSTOP) at a moment when the
  database shows one of its write transactions open; then a new one started on the same
  database and the unacknowledged requests sent again (every backend).
* OpenTelemetry's own ``OTLPSpanExporter`` behind a ``BatchSpanProcessor``, exporting to a
  server that is down at first and is SIGKILLed and restarted in the middle (every backend).

The clients behave like OTLP exporters: a request answered 429 or 503 is sent again after
its ``Retry-After`` (shortened here), one that met a transport error is sent again after a
short backoff; any other status is final. The server runs with ``asyncstore -v`` so that
its log shows the store's own retries and any traceback (there must be none).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from asyncstore.config import Backend, backend_of
from asyncstore.schema import spans as spans_table
from asyncstore.schema import trace_info
from tests import dbadmin
from tests.faults import admin
from tests.helpers import closed_port, count_rows, make_experiment, needs_server

PB = {"Content-Type": "application/x-protobuf"}
RETRY_PAUSE = 0.05
"""Seconds a test client waits before sending a refused request again (``Retry-After`` says 1)."""

Key = tuple[str, str]
"""A stored span's identity: (trace_id as ``tr-<hex>``, span_id as hex)."""


# --- the server process --------------------------------------------------------------------------


class Server:
    """A running ``asyncstore -v serve`` process on ``port``: its URL and its log."""

    def __init__(self, uri: str, log: Path, port: int, *options: str, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "asyncstore.cli", "-v", "serve", "--uri", uri, "--port", str(port),
                 "--log-level", "warning", *options],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # poll /health until it answers
            if self.process.poll() is not None:
                pytest.fail(f"asyncstore serve exited with {self.process.returncode}: {self.text()}")
            try:
                httpx.get(self.url + "/health", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        pytest.fail(f"asyncstore serve did not answer within 30 s: {self.text()}")

    def text(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        """SIGKILL: no drain, no clean-up, sockets (to clients and to the database) just closed."""
        self.process.kill()
        assert self.process.wait(timeout=30) == -signal.SIGKILL

    def stop(self) -> int:
        """SIGTERM and wait; the exit status (uvicorn re-raises the signal: -SIGTERM)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case a failed test left it stopped
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def lines(self, needle: str) -> int:
        """How many lines of the log contain ``needle``."""
        return sum(1 for line in self.text().splitlines() if needle in line)


@pytest.fixture
def servers(migrated_uri: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``asyncstore serve`` processes on the test's database (``port=`` to reuse one,
    ``env=`` for ``ASYNCSTORE_*`` settings).

    At the end every one still running is stopped by SIGTERM and must exit by it, and no
    log may hold a traceback, killed processes' included.
    """
    started: list[Server] = []

    def start(*options: str, port: int | None = None, env: dict[str, str] | None = None) -> Server:
        n = len(started)
        started.append(Server(migrated_uri, tmp_path / f"serve-{n}.log", port or closed_port(), *options, env=env))
        return started[-1]

    yield start
    problems = []
    for server in started:
        if server.process.poll() is None:
            code = server.stop()
            if code not in (0, -signal.SIGTERM):
                problems.append(f"{server.log.name}: exit status {code}")
        if "Traceback" in server.text():
            problems.append(f"{server.log.name}:\n{server.text()}")
    assert not problems, "\n".join(problems)


# --- exports and what the database holds ------------------------------------------------------------


@dataclass
class Export:
    """One OTLP request of one trace's spans, and what happened to each attempt to send it."""

    body: bytes
    keys: frozenset[Key]
    outcomes: list[int | str] = field(default_factory=list)
    """Each attempt's HTTP status, or ``"transport"`` for a transport error (no answer)."""

    @property
    def acked(self) -> bool:
        return 200 in self.outcomes

    @property
    def trace_id(self) -> str:
        return next(iter(self.keys))[0]


def make_export(spans: int) -> Export:
    """An ``ExportTraceServiceRequest`` of a new trace: a root and ``spans - 1`` children."""
    tid = random.randbytes(16)
    ids = [random.randbytes(8) for _ in range(spans)]
    t0 = 1_700_000_000_000_000_000
    otlp = [
        OtlpSpan(trace_id=tid, span_id=sid, parent_span_id=b"" if i == 0 else ids[0], name=f"s{i}",
                 start_time_unix_nano=t0 + i, end_time_unix_nano=t0 + 100_000_000)
        for i, sid in enumerate(ids)
    ]
    body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=otlp)])])
    return Export(body.SerializeToString(), frozenset(("tr-" + tid.hex(), sid.hex()) for sid in ids))


async def stored_keys(store: AsyncStore, exp: int) -> tuple[set[Key], int]:
    """The (trace_id, span_id) of the experiment's stored spans, and its count of span rows."""

    async def read(conn: Any) -> tuple[set[Key], int]:
        rows = await conn.execute(
            select(spans_table.c.trace_id, spans_table.c.span_id).where(spans_table.c.experiment_id == exp)
        )
        count = await conn.scalar(select(func.count()).select_from(spans_table).where(spans_table.c.experiment_id == exp))
        return {(r[0], r[1]) for r in rows}, int(count)

    return await store.uow.run(read, write=False)


def check_acknowledged(exports: list[Export], stored: set[Key]) -> None:
    """Every span of every acknowledged request is stored; each request is stored whole or not at all."""
    lost = [e.trace_id for e in exports if e.acked and not e.keys <= stored]
    assert not lost, f"{len(lost)} acknowledged request(s) not (wholly) stored: {lost[:5]}"
    torn = [e.trace_id for e in exports if not e.keys <= stored and e.keys & stored]
    assert not torn, f"{len(torn)} request(s) stored in part: {torn[:5]}"


async def send(http: httpx.AsyncClient, exp: int, export: Export, *, attempts: int) -> None:
    """Send ``export`` as an OTLP exporter does, at most ``attempts`` times, until it gets a 200.

    429 and 503 must carry ``Retry-After``; the client honours it (shortened to
    :data:`RETRY_PAUSE`). A transport error is retried after the same pause. Any other
    status is final (the tests then fail on it).
    """
    for _ in range(attempts):
        pause = RETRY_PAUSE
        try:
            response = await http.post("/v1/traces", content=export.body,
                                       headers={**PB, "x-mlflow-experiment-id": str(exp)})
        except httpx.TransportError:
            export.outcomes.append("transport")
        else:
            export.outcomes.append(response.status_code)
            if response.status_code not in (429, 503):
                return  # 200: done; anything else is final
            retry_after = float(response.headers["Retry-After"])
            assert retry_after > 0, response.headers
            pause = min(retry_after, RETRY_PAUSE)
        await asyncio.sleep(pause)  # the exporter's backoff, not synchronisation


async def until(check: Callable[[], Awaitable[bool]], seconds: float, interval: float = 0.02) -> bool:
    """Poll ``check`` until it is true or ``seconds`` pass; whether it became true."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def statuses(exports: list[Export]) -> set[int | str]:
    return {outcome for e in exports for outcome in e.outcomes}


# --- 1. the database's sessions killed under load ------------------------------------------------------

CLIENTS = 8
PER_CLIENT = 30
"""Requests each client sends at least (of SPANS spans each)..."""
SPANS = 5
KILL_ROUNDS = 20
"""... and more while the killer has not killed the database's sessions this many times."""


@needs_server
@pytest.mark.parametrize("transaction_retries", [None, "0"], ids=["store-retries", "no-store-retries"])
async def test_database_sessions_killed_under_load_lose_no_acknowledged_span(
    servers: Callable[..., Server], store: AsyncStore, migrated_uri: str, transaction_retries: str | None,
) -> None:
    """Promise: with every session of the database killed again and again while 8 clients
    post, each request is answered 200, or 429/503 with Retry-After (never 500, no traceback
    in the log); every acknowledged request is stored whole and every request is stored
    whole or not at all; the clients' retries then bring every span in, exactly once.

    With the store's default ``transaction_retries`` a killed transaction is mostly run
    again inside the server; with none, each one the kills hit is answered 503 and the
    client's retry is what brings it in.
    """
    env = {} if transaction_retries is None else {"ASYNCSTORE_TRANSACTION_RETRIES": transaction_retries}
    # A short queue: while the writer waits for the database, some clients get 429.
    server = servers("--queue-limit", "2", env=env)
    exp = await make_experiment(store)
    exports: list[Export] = []
    answered = kills = rounds = 0
    progress = asyncio.Condition()
    done = False
    give_up = asyncio.get_running_loop().time() + 20  # the killer is stuck: end the load, fail below

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal answered
        sent = 0
        while sent < PER_CLIENT or (rounds < KILL_ROUNDS and asyncio.get_running_loop().time() < give_up):
            export = make_export(SPANS)
            exports.append(export)
            await send(http, exp, export, attempts=4)
            sent += 1
            async with progress:
                answered += 1
                progress.notify_all()

    async def killer() -> None:
        """Kill every session of the database each time a request was answered since the last kill.

        ``rounds`` counts the kills that found a session to kill."""
        nonlocal kills, rounds
        while True:
            async with progress:
                last = answered
                await progress.wait_for(lambda: done or answered > last)
            if done:
                return
            killed = await admin.kill_all_sessions(migrated_uri)
            kills += killed
            rounds += killed > 0  # none when the server was between connections

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
        killing = asyncio.create_task(killer())
        await asyncio.gather(*(client(http) for _ in range(CLIENTS)))
        async with progress:
            done = True
            progress.notify_all()
        await killing

    seen = statuses(exports)
    assert seen <= {200, 429, 503}, seen
    assert rounds >= KILL_ROUNDS, (rounds, kills)
    # The kills hit transactions in flight: the store ran them again, or (without retries) answered 503.
    store_retries = server.lines("transient failure")
    refused = sum(e.outcomes.count(503) for e in exports)
    full = sum(e.outcomes.count(429) for e in exports)
    if transaction_retries is None:
        assert store_retries > 0, server.text()
    else:
        assert store_retries == 0 and refused > 0, (store_retries, refused)
    assert "Traceback" not in server.text(), server.text()

    stored, rows = await stored_keys(store, exp)
    check_acknowledged(exports, stored)

    # The exporters' retries bring the rest (the database left alone now).
    left = [e for e in exports if not e.acked]
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(send(http, exp, e, attempts=50) for e in left))
    assert all(e.acked for e in exports), [e.outcomes for e in exports if not e.acked]
    stored, rows = await stored_keys(store, exp)
    every = set().union(*(e.keys for e in exports))
    assert stored == every and rows == len(every) == len(exports) * SPANS
    assert await count_rows(store, trace_info, trace_info.c.experiment_id == exp) == len(exports)
    print(f"\nrequests {len(exports)}, kill rounds {rounds}, sessions killed {kills}, store retries "
          f"{store_retries}, 503s {refused}, 429s {full}, left for the final retries {len(left)}")


# --- 2. the server SIGKILLed mid-stream ---------------------------------------------------------------

KILLED_PER_CLIENT = 20
KILLED_SPANS = 50
"""Spans per request: big enough that the writer spends most of its time in a transaction."""


async def _mysql_open_transactions(uri: str) -> int:
    """How many sessions of ``uri``'s MariaDB database are in an active InnoDB transaction.

    From ``SHOW ENGINE INNODB STATUS``, which is live: ``information_schema.innodb_trx``
    (what :func:`tests.faults.admin.open_transactions` reads) is a cache that MariaDB
    refreshes only when it was not read for 100 ms, so polled faster it never changes.
    """
    url = make_url(uri)
    async with dbadmin.mysql_cursor(url.set(database=None)) as cur:
        await cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (url.database,))
        sessions = {int(row[0]) for row in await cur.fetchall()}
        await cur.execute("SHOW ENGINE INNODB STATUS")
        status = str((await cur.fetchall())[0][2])
    active = set()
    for block in status.split("\n---TRANSACTION ")[1:]:
        thread = re.search(r"thread id (\d+)", block)
        if "ACTIVE" in block.split("\n", 1)[0] and thread is not None:
            active.add(int(thread.group(1)))
    return len(active & sessions)


async def _open_transaction(uri: str) -> bool:
    """Whether a write transaction is open on ``uri``'s database (the test's store holds none meanwhile).

    PostgreSQL and MariaDB list it; on SQLite another connection cannot take the write lock.
    """
    backend = backend_of(uri)
    if backend is Backend.POSTGRESQL:
        return await admin.open_transactions(uri) > 0
    if backend is Backend.MYSQL:
        return await _mysql_open_transactions(uri) > 0
    probe = sqlite3.connect(make_url(uri).database or "", timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:  # SQLITE_BUSY: someone holds the write lock
        assert getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) == sqlite3.SQLITE_BUSY, exc  # 3.11+ has it
        return True
    else:
        probe.execute("ROLLBACK")
        return False
    finally:
        probe.close()


async def _no_open_transaction(uri: str) -> bool:
    return not await _open_transaction(uri)


async def frozen_in_transaction(server: Server, uri: str, seconds: float = 10) -> bool:
    """Stop the server (SIGSTOP) at a moment when one of its write transactions is open.

    Stops it, looks, and lets it go on (SIGCONT) until a look finds a transaction open:
    the process is then frozen inside it, for the caller to SIGKILL. Whether that happened
    within ``seconds``.
    """
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        server.process.send_signal(signal.SIGSTOP)
        try:
            found = await _open_transaction(uri)
        except BaseException:
            server.process.send_signal(signal.SIGCONT)
            raise
        if found:
            return True
        server.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.005)  # let it run a little before the next look
    return False


async def test_server_sigkilled_mid_stream_loses_no_acknowledged_span(
    servers: Callable[..., Server], store: AsyncStore, migrated_uri: str,
) -> None:
    """Promise: when the server is SIGKILLed while 8 clients post, in the middle of one of
    its write transactions, every request it had answered 200 is stored whole, no request
    is stored in part, and the killed process leaves no transaction open; a new server on the
    same database then takes the requests that were not acknowledged, and every span is
    stored exactly once."""
    server = servers("--max-wait-ms", "2")
    exp = await make_experiment(store)
    work = [[make_export(KILLED_SPANS) for _ in range(KILLED_PER_CLIENT)] for _ in range(CLIENTS)]
    exports = [e for batch in work for e in batch]
    acked = 0
    enough = asyncio.Event()

    async def client(http: httpx.AsyncClient, batch: list[Export]) -> None:
        nonlocal acked
        for export in batch:
            await send(http, exp, export, attempts=1)
            if export.outcomes[-1] == "transport":
                return  # the server is gone: the rest waits for the next one
            acked += export.acked
            if acked >= len(exports) // 3:
                enough.set()

    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        load = asyncio.gather(*(client(http, batch) for batch in work))
        await asyncio.wait_for(enough.wait(), 30)
        assert await frozen_in_transaction(server, migrated_uri), "never caught the server in a transaction"
        server.kill()
        await load

    assert statuses(exports) <= {200, "transport"}, statuses(exports)
    # The kill cut clients off: requests in flight, or the next ones refused.
    cut = sum(1 for e in exports if "transport" in e.outcomes)
    assert cut > 0
    ack_count = sum(e.acked for e in exports)
    assert len(exports) // 3 <= ack_count < len(exports)
    # The database noticed the closed sockets (or SQLite's lock went with the process): rolled back.
    assert await until(lambda: _no_open_transaction(migrated_uri), 10), "the killed server's transaction lingers"
    stored, _ = await stored_keys(store, exp)
    check_acknowledged(exports, stored)
    unacked_stored = sum(1 for e in exports if not e.acked and e.keys <= stored)  # written, answer lost

    # A new server on the same database; the clients send again what was not acknowledged.
    again = servers("--max-wait-ms", "20")
    left = [e for e in exports if not e.acked]

    async def resend(http: httpx.AsyncClient, batch: list[Export]) -> None:
        for export in batch:
            if not export.acked:
                await send(http, exp, export, attempts=10)

    async with httpx.AsyncClient(base_url=again.url, timeout=60) as http:
        await asyncio.gather(*(resend(http, batch) for batch in work))
    assert all(e.acked for e in exports), [e.outcomes for e in exports if not e.acked]
    stored, rows = await stored_keys(store, exp)
    every = set().union(*(e.keys for e in exports))
    assert stored == every and rows == len(every) == CLIENTS * KILLED_PER_CLIENT * KILLED_SPANS
    assert await count_rows(store, trace_info, trace_info.c.experiment_id == exp) == len(exports)
    print(f"\nacknowledged before the kill {ack_count}, cut off {cut}, sent again {len(left)}, "
          f"of which stored before the kill without an answer {unacked_stored}")


# --- 3. the OpenTelemetry SDK's exporter against a server down, then restarted -----------------------


class _Records(logging.Handler):
    """Collects the exporter's log records (its retries are WARNINGs, its give-ups ERRORs)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.guard = threading.Lock()  # not `lock`: Handler.handle holds its own around emit

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            self.records.append(record)

    def count(self, needle: str) -> int:
        with self.guard:
            return sum(1 for r in self.records if needle in r.getMessage())


EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
TRANSIENT = "Transient error"
"""What the exporter logs before each retry (of 429, 502, 503, 504 or a connection error)."""


async def test_sdk_exporter_retries_bring_every_span_through_a_down_and_restarted_server(
    servers: Callable[..., Server], store: AsyncStore,
) -> None:
    """Promise: OpenTelemetry's ``OTLPSpanExporter`` (BatchSpanProcessor) retries a
    connection refused and a connection cut by a SIGKILLed server, with its own backoff
    (about 1 s, 2 s, 4 s … within its timeout); with the server started while it waits,
    every span it made is stored exactly once, and it never gives a batch up."""
    exp = await make_experiment(store)
    port = closed_port()
    records = _Records()
    logger = logging.getLogger(EXPORTER_LOGGER)
    logger.addHandler(records)
    # Its timeout (10 s, the default) bounds each request and all the retries of a batch:
    # it retries about 1, 3 and 7 s after the first failure, time enough for a server to start.
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces",
                                headers={"x-mlflow-experiment-id": str(exp)}, timeout=10)
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "faults"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=20, max_export_batch_size=16))
    tracer = provider.get_tracer("faults")

    def traces(count: int) -> None:
        for _ in range(count):
            with tracer.start_as_current_span("root"):
                for i in range(3):
                    with tracer.start_as_current_span(f"child-{i}"):
                        pass

    async def rows() -> int:
        return (await stored_keys(store, exp))[1]

    async def retried(more_than: int) -> bool:
        return records.count(TRANSIENT) > more_than

    try:
        # Down at first: the first export is refused, and the exporter says it will retry.
        traces(5)
        assert await until(lambda: retried(0), 10), "the exporter did not meet the closed port"
        server = servers(port=port)
        assert await until(lambda: _equals(rows, 20), 15), server.text()

        # Restarted in the middle: killed while spans keep coming, started again once the
        # exporter has met the dead server.
        traces(10)
        assert await until(lambda: _at_least(rows, 40), 15)
        before = records.count(TRANSIENT)
        server.kill()
        traces(10)
        assert await until(lambda: retried(before), 10), "the exporter did not meet the killed server"
        traces(5)
        servers(port=port)
        assert await asyncio.to_thread(provider.force_flush)
        assert await until(lambda: _equals(rows, 120), 15)
    finally:
        await asyncio.to_thread(provider.shutdown)
        logger.removeHandler(records)

    made = {("tr-" + format(s.context.trace_id, "032x"), format(s.context.span_id, "016x"))
            for s in memory.get_finished_spans() if s.context is not None}
    stored, count = await stored_keys(store, exp)
    assert stored == made and count == len(made) == 120
    assert records.count("Failed to export") == 0, [r.getMessage() for r in records.records]
    print(f"\nexporter retries {records.count(TRANSIENT)}")


async def _equals(read: Callable[[], Awaitable[int]], want: int) -> bool:
    return await read() == want


async def _at_least(read: Callable[[], Awaitable[int]], want: int) -> bool:
    return await read() >= want
