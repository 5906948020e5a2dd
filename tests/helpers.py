"""Helpers shared by the test modules: backend capabilities, factories, counters, polling.

Test modules import from here (and from :mod:`tests.dbadmin` for admin connections),
never from one another.

* Backend selection by what a test needs, not by backend name, so that a new backend
  runs every test whose needs it meets: :data:`needs_server`,
  :data:`needs_transactional_ddl`; :data:`sqlite_only`, :data:`mysql_only` and
  :data:`postgresql_only` for tests of one engine's own behaviour (SQLite's file
  locking, MariaDB's ``wait_timeout``, PostgreSQL-only peers).
* Span and experiment factories (:func:`make_span`, :func:`make_experiment`, …).
* Counting what the store did: rows (:func:`count_rows`), SQL statements
  (:func:`count_statements`), transaction retries (:func:`transaction_retries`).
* One call of every read-only kind (:func:`read_calls`).
* :func:`closed_port`, :func:`eventually`, :func:`readme_row`, :func:`readme_python`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from aiomysql.cursors import RE_INSERT_VALUES
from sqlalchemy import Table, event, func, insert, select

from asyncstore.entities import Metric, NewJob, Param, RunTag, Span, SpanStatus
from asyncstore.schema import experiments

if TYPE_CHECKING:
    from asyncstore import AsyncStore

T = TypeVar("T")

# --- backends and what they can do ---------------------------------------------------------

BACKENDS = ("sqlite", "postgresql", "mysql")
"""Every backend the suite knows, in the order the ``backend`` fixture runs them."""

CAPABILITIES: dict[str, frozenset[str]] = {
    # server: a networked server whose sessions an admin connection can kill and count.
    # transactional_ddl: CREATE/ALTER/DROP roll back with the transaction around them.
    "sqlite": frozenset({"transactional_ddl"}),
    "postgresql": frozenset({"server", "transactional_ddl"}),
    "mysql": frozenset({"server"}),
}
"""What each backend offers that some tests need."""


def backends_with(*needs: str) -> list[str]:
    """The backends that offer every capability in ``needs``."""
    unknown = set(needs) - set().union(*CAPABILITIES.values())
    if unknown:
        raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(set().union(*CAPABILITIES.values()))}")
    return [name for name in BACKENDS if CAPABILITIES[name] >= set(needs)]


def _on(backends: list[str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("backend", backends, indirect=True)


needs_server = _on(backends_with("server"))
"""Run on backends with a server process whose sessions can be killed (SQLite's analogue
is a killed process, tested on its own)."""
needs_transactional_ddl = _on(backends_with("transactional_ddl"))
"""Run on backends whose DDL is transactional, so a killed migration leaves whole revisions."""
sqlite_only = _on(["sqlite"])
"""SQLite's own file-level behaviour: locking, busy timeout, unenforced VARCHAR lengths."""
mysql_only = _on(["mysql"])
"""MySQL/MariaDB's own behaviour (``wait_timeout``)."""
postgresql_only = _on(["postgresql"])
"""What exists on PostgreSQL alone: the job queues compared with asyncstore's worker
(procrastinate and PgQueuer run on nothing else)."""


# --- spans and experiments -------------------------------------------------------------------

T0 = 1_700_000_000_000_000_000
"""A fixed epoch time in nanoseconds, for span times."""
MS = 1_000_000
"""Nanoseconds per millisecond."""
_span_ids = itertools.count(1)


async def make_experiment(store: AsyncStore, name: str | None = None) -> int:
    """Insert an experiment row directly (the experiments repository is not needed)."""
    async with store.uow.transaction() as conn:
        result = await conn.execute(
            insert(experiments).values(name=name or f"exp-{uuid.uuid4().hex[:8]}", lifecycle_stage="active")
        )
        return int(result.inserted_primary_key[0])


def new_trace_id() -> str:
    """A fresh MLflow-style trace id."""
    return "tr-" + uuid.uuid4().hex


def new_span_id() -> str:
    """A fresh 16-hex span id."""
    return f"{next(_span_ids):016x}"


def make_span(trace_id: str, span_id: str | None = None, **fields: object) -> Span:
    """A finished OK span with some content, overridable field by field."""
    values: dict[str, object] = {
        "trace_id": trace_id,
        "span_id": span_id or new_span_id(),
        "name": "step",
        "start_time_unix_nano": T0,
        "end_time_unix_nano": T0 + 5 * MS,
        "status": SpanStatus.OK,
        "attributes": {"k": "v", "n": 1},
    }
    values.update(fields)
    return Span(**values)  # type: ignore[arg-type]


# --- counting what the store did ---------------------------------------------------------------


async def count_rows(store: AsyncStore, table: Table, *where: Any) -> int:
    """``SELECT count(*)`` of ``table`` (optionally filtered) through the store's own unit of work."""

    async def read(conn: Any) -> int:
        return int(await conn.scalar(select(func.count()).select_from(table).where(*where)))

    return int(await store.uow.run(read, write=False))


@contextlib.contextmanager
def count_statements(store: AsyncStore) -> Iterator[list[str]]:
    """Collect the SQL of every statement the store's engine sends inside the block.

    An ``executemany`` on MySQL/MariaDB counts as aiomysql sends it: one multi-row
    statement when aiomysql can rewrite it so (an INSERT whose VALUES hold only
    placeholders), else once per row.
    """
    seen: list[str] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        rows = len(parameters) if many and conn.dialect.name == "mysql" else 1
        seen.extend([statement] * (1 if rows <= 1 or RE_INSERT_VALUES.match(statement) else rows))

    event.listen(store.engine.sync_engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", listener)


RETRY_LOGGER = "asyncstore.uow"
"""The logger on which the unit of work reports each retry of a transient failure."""


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if "transient failure" in record.getMessage():
            self.into.append(record)


@contextlib.contextmanager
def transaction_retries() -> Iterator[list[logging.LogRecord]]:
    """Collect the unit of work's retries of transient failures made inside the block.

    Each retry is one INFO record "transient failure (…); retry n of m …" on
    :data:`RETRY_LOGGER`; the logger's level is lowered to INFO for the block if needed,
    which changes nothing but what is logged.
    """
    found: list[logging.LogRecord] = []
    logger = logging.getLogger(RETRY_LOGGER)
    handler = _Collect(found)
    level = logger.level
    if not logger.isEnabledFor(logging.INFO):
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# --- ports and polling ---------------------------------------------------------------------------


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def eventually(read: Callable[[], Awaitable[T]], want: T, seconds: float = 10.0, interval: float = 0.05) -> T:
    """Poll ``read`` until it returns ``want`` or ``seconds`` pass; return the last value read.

    For server state that changes on its own shortly after an event (a session the
    server closes after its socket went away), where there is nothing to await. The
    caller asserts the result, so a timeout fails the test with the value last seen.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    value = await read()
    while value != want and loop.time() < deadline:
        await asyncio.sleep(interval)
        value = await read()
    return value


README = Path(__file__).resolve().parent.parent / "README.md"


# --- read-only calls ---------------------------------------------------------------------------


async def read_calls(store: AsyncStore) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each kind of read-only call (``get*``, ``search*``, ``list``, ``count*``), on data made here."""
    name = secrets.token_hex(4)
    exp = await store.experiments.create("reads-" + name)
    run = await store.runs.create(exp, run_name="read-me")
    run_id = run.info.run_id
    await store.runs.log_batch(
        run_id, [Metric("loss", 1.0 / (s + 1), 1_000 + s, s) for s in range(5)], [Param("lr", "0.1")], [RunTag("t", "v")]
    )
    trace_id = "tr-" + secrets.token_hex(16)
    root, t0 = secrets.token_hex(8), 1_700_000_000_000_000_000
    await store.spans.log_spans(exp, [
        Span(trace_id, root, "root", t0, t0 + 9_000_000, status=SpanStatus.OK),
        Span(trace_id, secrets.token_hex(8), "child", t0 + 1, t0 + 5, parent_span_id=root),
    ])
    [job] = await store.jobs.create_many([NewJob("reads.job", {"n": 1})])
    return {
        "experiments.get": lambda: store.experiments.get(exp),
        "experiments.get_by_name": lambda: store.experiments.get_by_name("reads-" + name),
        "experiments.search": lambda: store.experiments.search(),
        "runs.get": lambda: store.runs.get(run_id),
        "runs.search": lambda: store.runs.search([exp], "metrics.loss < 2", order_by=["metrics.loss DESC"]),
        "runs.get_metric_history": lambda: store.runs.get_metric_history(run_id, "loss"),
        "traces.get": lambda: store.traces.get(trace_id),
        "traces.get_info": lambda: store.traces.get_info(trace_id),
        "spans.get_spans": lambda: store.spans.get_spans(trace_id),
        "traces.search": lambda: store.traces.search([exp]),
        "spans.search_spans": lambda: store.spans.search_spans(exp, name="child"),
        "jobs.get": lambda: store.jobs.get(job.job_id),
        "jobs.list": lambda: _all(store.jobs.list(job_name="reads.job")),
        "jobs.count_by_status": lambda: store.jobs.count_by_status("reads.job"),
    }


async def _all(jobs: AsyncIterator[Any]) -> list[Any]:
    return [job async for job in jobs]


def comparable(value: Any) -> Any:
    """Pages compare by their items (their tokens differ per call only if the data changed)."""
    items = getattr(value, "items", None)
    return list(items) if items is not None and not callable(items) else value


def readme_python(heading: str) -> str:
    """The first ```python block of the README's section ``## heading``."""
    section = README.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, f"README's {heading} section has no python block"
    return match.group(1)


def readme_row(starts_with: str) -> str:
    """The one README table row whose first cell starts with ``starts_with``."""
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith(f"| {starts_with}")]
    assert len(rows) == 1, f"README has {len(rows)} table rows starting with {starts_with!r}"
    return rows[0]
