"""Hostile filter and order-by strings: fuzzed and SQL-injection attempts.

Run search, trace search and experiment search receive strings built from the
grammar's pieces mixed with garbage and injection payloads (hypothesis), plus a fixed
corpus of injection attempts. The promises: each call returns a correct page or
raises INVALID_PARAMETER, never another exception; the database is unchanged
afterwards (every table's rows, compared before and after); and a payload used as a
quoted value matches exactly the rows that hold that string.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from asyncstore import AsyncStore, InvalidParameter
from asyncstore.entities import Metric, Param, RunTag, Span, SpanStatus
from asyncstore.schema import metadata
from tests.helpers import BACKENDS, readme_row

INJECTIONS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "'; DROP TABLE runs; --",
    "\"; DROP TABLE runs; --",
    "x'); DELETE FROM metrics; --",
    "1; DELETE FROM runs",
    "1 OR 1=1",
    "' UNION SELECT run_uuid FROM runs --",
    "') UNION SELECT * FROM experiments --",
    "'||(SELECT pg_sleep(5))||'",
    "' AND SLEEP(5) --",
    "1 AND (SELECT 1 FROM pg_sleep(5))",
    "`; DROP TABLE tags; --",
    "tags.`x` = 'a'` OR 1=1",
    "\\'; DROP TABLE params; --",
    "%' OR 'a' LIKE '%",
    "/* comment */ OR 1=1",
    "\x00' OR 1=1",
    "'--",
    "\\",
    "\\\\'",
    "''",
    "%_%",
    "💥' OR '💥'='💥",
    "ʼ OR 1=1 --",  # a modifier letter apostrophe, not a quote
    "$1",
    "%s",
    ":name",
    "?",
    "pad",
    "pad  ",  # MySQL's PAD SPACE collations would compare it equal to "pad"
    "Pad",
]
"""Payloads tried in every position of a filter string."""

STORED = [p for p in INJECTIONS if "\x00" not in p]
"""Payloads also stored as run tags and params, trace tags and metadata, span names.

A NUL character is left out: PostgreSQL refuses it in text (INVALID_PARAMETER, see
tests/test_hostile_input_values.py) while SQLite and MariaDB store it."""

FUZZ_EXAMPLES = {"runs": 600, "traces": 400, "experiments": 200, "exact": 300}

SEARCHES = ("runs", "traces", "experiments")
"""Every search kind that takes a filter and an order-by."""


def quote(value: str) -> str:
    """Quote a string literal of the filter grammar (quote doubled, backslash escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# --- the seeded database -----------------------------------------------------------------


class Seeded:
    """A store on a fresh database with runs and traces holding every payload."""

    def __init__(self, runner: asyncio.Runner, store: AsyncStore) -> None:
        self.runner, self.store = runner, store
        self.run_payload: dict[str, str] = {}  # run id -> its payload tag
        self.trace_payload: dict[str, str] = {}
        self.exp = self.other_exp = ""
        self.deleted_run = ""
        self.allowed: dict[str, set[str]] = {}  # search kind -> ids a page may hold

    async def seed(self) -> None:
        store = self.store
        self.exp = await store.experiments.create("hostile")
        self.other_exp = await store.experiments.create("other")
        for i, payload in enumerate(STORED):
            run = await store.runs.create(self.exp, run_name=f"r{i}", start_time=1000 + i)
            await store.runs.log_batch(
                run.info.run_id,
                metrics=[Metric("acc", i / 10, 1, 0), Metric("odd", float("nan") if i % 2 else float("inf"), 1, 0)],
                params=[Param("payload", payload)],
                tags=[RunTag("payload", payload)],
            )
            self.run_payload[run.info.run_id] = payload
            trace_id = f"tr-{i + 1:032x}"
            await store.traces.start(self.exp, trace_id=trace_id, timestamp_ms=1000 + i, tags={"payload": payload},
                                     metadata={"payload": payload})
            await store.spans.log_spans(self.exp, [Span(trace_id, f"{i + 1:016x}", payload, 10**18, 10**18 + 5,
                                                        status=SpanStatus.OK)])
            self.trace_payload[trace_id] = payload
        # Rows that must never leak into results: another experiment's, a deleted run.
        foreign = await store.runs.create(self.other_exp, run_name="foreign")
        await store.runs.log_batch(foreign.info.run_id, tags=[RunTag("payload", INJECTIONS[0])])
        await store.traces.start(self.other_exp, trace_id="tr-" + "f" * 32, tags={"payload": INJECTIONS[0]})
        deleted = await store.runs.create(self.exp, run_name="deleted")
        await store.runs.log_batch(deleted.info.run_id, tags=[RunTag("payload", INJECTIONS[0])])
        await store.runs.delete(deleted.info.run_id)
        self.deleted_run = deleted.info.run_id
        self.allowed = {
            "runs": set(self.run_payload),
            "traces": set(self.trace_payload),
            "experiments": {self.exp, self.other_exp, "0", "1", "2"},
        }

    def searched(self, kind: str, filter_string: str, order_by: Sequence[str]) -> str:
        """Run one search of ``kind``; return "invalid" (INVALID_PARAMETER) or "page".

        A page must hold distinct ids, all of them allowed: runs and traces of the
        experiment searched (never another experiment's, never a deleted run), known
        experiments. Any other exception propagates and fails the test.
        """
        store = self.store
        try:
            if kind == "runs":
                page = self.call(store.runs.search([self.exp], filter_string, order_by=order_by))
                ids = [run.info.run_id for run in page]
            elif kind == "traces":
                page = self.call(store.traces.search([self.exp], filter_string, order_by=order_by or ("timestamp_ms DESC",)))
                ids = [info.trace_id for info in page]
            else:
                page = self.call(store.experiments.search(filter_string=filter_string, order_by=order_by))
                ids = [e.experiment_id for e in page]
        except InvalidParameter:
            return "invalid"
        assert len(ids) == len(set(ids)) and set(ids) <= self.allowed[kind], (kind, filter_string, order_by)
        return "page"

    async def snapshot(self) -> dict[str, tuple[int, str]]:
        """Every table's row count and a digest of all its rows."""

        async def read(conn):  # type: ignore[no-untyped-def]
            out = {}
            for table in metadata.sorted_tables:
                rows = sorted(repr(tuple(row)) for row in await conn.execute(select(table)))
                out[table.name] = (len(rows), hashlib.sha256("\n".join(rows).encode()).hexdigest())
            return out

        return await self.store.uow.run(read, write=False)

    def call(self, coro):  # type: ignore[no-untyped-def]
        return self.runner.run(coro)


@pytest.fixture
def seeded(migrated_uri: str) -> Iterator[Seeded]:
    """A seeded store driven from synchronous hypothesis tests through one event loop."""
    with asyncio.Runner() as runner:
        async def open_store() -> AsyncStore:
            return await AsyncStore.open(migrated_uri)

        store = runner.run(open_store())
        try:
            box = Seeded(runner, store)
            runner.run(box.seed())
            yield box
        finally:
            runner.run(store.close())


# --- strategies ----------------------------------------------------------------------------

_PREFIXES = ["metrics", "metric", "params", "param", "parameter", "tags", "tag", "attributes", "attribute",
             "attr", "run", "trace", "span", "spans", "metadata", "request_metadata", "", "x", "metrics.metrics"]
_KEYS = ["acc", "odd", "payload", "status", "state", "start_time", "end_time", "run_id", "run_name", "user_id",
         "artifact_uri", "name", "type", "timestamp_ms", "execution_time_ms", "client_request_id", "trace_id",
         "lifecycle_stage", "creation_time", "experiment_id"]
_COMPARATORS = ["=", "!=", ">", ">=", "<", "<=", "LIKE", "ILIKE", "IN", "NOT IN", "IS NULL", "IS NOT NULL",
                "like", "ilike", "in", "not in", "is null", "==", "<>", "~", "is", "not", "", ";", "= =", "!"]
_JOINS = [" AND ", " and ", " OR ", "; ", " ", " AND AND ", ",", " && "]

_text = st.text(max_size=24)
_payload = st.one_of(st.sampled_from(INJECTIONS), _text)
_key = st.one_of(st.sampled_from(_KEYS), _payload)


@st.composite
def _identifier(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(_PREFIXES))
    key = draw(_key)
    form = draw(st.sampled_from(["plain", "backquoted", "double", "single", "bare"]))
    if form == "backquoted":
        key = "`" + key + "`"
    elif form == "double":
        key = '"' + key.replace('"', '""') + '"'
    elif form == "single":
        key = quote(key)
    return key if form == "bare" or not prefix else f"{prefix}.{key}"


_number = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e999", "-1e999", "nan", "NaN", "inf", "-inf", "0x10", "1_000", ".5", "5.", "-0", "+1", "1e-400",
                     "9" * 400]),
)
_value = st.one_of(
    _number,
    _payload.map(quote),
    _payload.map(lambda v: '"' + v.replace('"', '""') + '"'),
    st.lists(_payload.map(quote), max_size=3).map(lambda vs: "(" + ", ".join(vs) + ")"),
    st.sampled_from(["NULL", "(SELECT 1)", "()", "(1, 2)", "TRUE", "'unterminated", "`k`"]),
    _payload,
)


@st.composite
def _clause(draw: st.DrawFn) -> str:
    return f"{draw(_identifier())} {draw(st.sampled_from(_COMPARATORS))} {draw(_value)}".strip()


_VALID_STRING_KEYS = {
    "runs": ["tags.payload", "params.payload", "attributes.run_name", "run_name", "tags.`payload`"],
    "traces": ["tags.payload", "metadata.payload", "span.name", "tags.`payload`"],
    "experiments": ["name", "attributes.name", "attribute.name", "tags.payload", "tags.`payload`"],
}
"""String keys each search accepts: a valid clause with a hostile quoted value reaches SQL."""


@st.composite
def filter_strings(draw: st.DrawFn, search: str) -> str:
    """Grammar-shaped strings with garbage, raw text, or injection payloads alone, and
    clauses valid for ``search`` whose quoted value is hostile (so pages are reached)."""
    kind = draw(st.sampled_from(["clauses", "clauses", "clauses", "text", "payload", "valid"]))
    if kind == "text":
        return draw(st.text(max_size=80))
    if kind == "payload":
        return draw(st.sampled_from(INJECTIONS))
    if kind == "valid":
        key = draw(st.sampled_from(_VALID_STRING_KEYS[search]))
        return f"{key} {draw(st.sampled_from(['=', '!=', 'LIKE', 'ILIKE']))} {quote(draw(_payload))}"
    clauses = draw(st.lists(_clause(), min_size=1, max_size=3))
    out = clauses[0]
    for clause in clauses[1:]:
        out += draw(st.sampled_from(_JOINS)) + clause
    return out


@st.composite
def order_bys(draw: st.DrawFn) -> list[str]:
    """Order-by lists: real keys, directions, garbage and payloads."""
    item = st.one_of(
        st.builds(lambda i, d: i + d, _identifier(), st.sampled_from(["", " ASC", " DESC", " asc", " DROP", " ASC DESC", ";"])),
        st.text(max_size=20),
        st.sampled_from(INJECTIONS),
    )
    return draw(st.lists(item, max_size=3))


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], database=None)


# --- the tests -----------------------------------------------------------------------------


def _fuzz(seeded: Seeded, kind: str) -> Counter[str]:
    """Search ``kind`` with generated filter / order-by pairs; count their outcomes.

    Beside them a fixed pair of each outcome runs too (a page, a refusal), so both
    checks are exercised whatever the draw; only the generated pairs are counted.
    """
    outcomes: Counter[str] = Counter()

    @settings(FUZZ, max_examples=FUZZ_EXAMPLES[kind])
    @given(filter_string=filter_strings(kind), order_by=order_bys())
    def check(filter_string: str, order_by: list[str]) -> None:
        outcome = seeded.searched(kind, filter_string, order_by)
        event(outcome)
        outcomes[outcome] += 1

    check()
    page_filter = "name = 'hostile'" if kind == "experiments" else "tags.payload = 'pad'"
    assert seeded.searched(kind, page_filter, ()) == "page"
    assert seeded.searched(kind, "no_such_prefix.key = 1", ()) == "invalid"
    return outcomes


def test_run_search_fuzz(seeded: Seeded) -> None:
    """Promise: any filter / order-by pair gives INVALID_PARAMETER or a page of distinct,
    active runs of the experiment searched (never another experiment's run or a deleted
    one), and the database is unchanged afterwards."""
    before = seeded.call(seeded.snapshot())
    outcomes = _fuzz(seeded, "runs")
    assert seeded.call(seeded.snapshot()) == before
    assert outcomes["page"] > 0 and outcomes["invalid"] > 0  # the fuzz reached both sides


def test_trace_search_fuzz(seeded: Seeded) -> None:
    """Promise: any filter / order-by pair gives INVALID_PARAMETER or a page of distinct
    traces of the experiment searched, and the database is unchanged afterwards."""
    before = seeded.call(seeded.snapshot())
    outcomes = _fuzz(seeded, "traces")
    assert seeded.call(seeded.snapshot()) == before
    assert outcomes["page"] > 0 and outcomes["invalid"] > 0


def test_experiment_search_fuzz(seeded: Seeded) -> None:
    """Promise: any filter / order-by pair on experiment search gives INVALID_PARAMETER or
    a page of distinct, known experiments, and the database is unchanged afterwards."""
    before = seeded.call(seeded.snapshot())
    outcomes = _fuzz(seeded, "experiments")
    assert seeded.call(seeded.snapshot()) == before
    assert outcomes["page"] > 0 and outcomes["invalid"] > 0


def test_readme_states_this_fuzz_size() -> None:
    """README, Reliability: the filter and order-by fuzz runs "about 4,500 cases", the
    generated examples of the tests here on every backend."""
    match = re.search(r"hypothesis, about ([\d,]+) cases", readme_row("Filter and order-by fuzz"))
    assert match is not None
    assert int(match.group(1).replace(",", "")) == sum(FUZZ_EXAMPLES.values()) * len(BACKENDS)


def test_quoted_payloads_match_exactly(seeded: Seeded) -> None:
    """Promise: a payload (an injection string, arbitrary text) used as a quoted value in
    ``tags.payload = ...``, ``params.payload = ...``, a trace's ``tags.payload`` /
    ``metadata.payload`` and ``span.name`` matches exactly the rows holding that very
    string, on every backend (no trailing-space or case folding), and nothing else."""
    before = seeded.call(seeded.snapshot())

    @settings(FUZZ, max_examples=FUZZ_EXAMPLES["exact"])
    @given(value=_payload, field=st.sampled_from(["tags.payload", "params.payload"]),
           trace_field=st.sampled_from(["tags.payload", "metadata.payload", "span.name"]))
    def check(value: str, field: str, trace_field: str) -> None:
        if "\x00" in value:  # PostgreSQL refuses NUL in text; elsewhere nothing holds it
            for call in (seeded.store.runs.search([seeded.exp], f"{field} = {quote(value)}"),
                         seeded.store.traces.search([seeded.exp], f"{trace_field} = {quote(value)}")):
                try:
                    assert list(seeded.call(call)) == []
                except InvalidParameter:
                    pass
            return
        runs = seeded.call(seeded.store.runs.search([seeded.exp], f"{field} = {quote(value)}"))
        assert {r.info.run_id for r in runs} == {r for r, p in seeded.run_payload.items() if p == value}, (field, value)
        traces = seeded.call(seeded.store.traces.search([seeded.exp], f"{trace_field} = {quote(value)}"))
        assert {t.trace_id for t in traces} == {t for t, p in seeded.trace_payload.items() if p == value}, (trace_field, value)

    check()
    assert seeded.call(seeded.snapshot()) == before


def test_injection_corpus_in_every_position(seeded: Seeded) -> None:
    """Promise: an injection payload as a whole filter, as a key (backquoted), as an
    unquoted value and as an order-by gives, in run, trace and experiment search alike,
    INVALID_PARAMETER or a page of the searched experiment's rows (of known
    experiments); quoted, it matches exactly its own row; the database is unchanged
    afterwards."""
    before = seeded.call(seeded.snapshot())
    for payload in STORED:
        _try_everywhere(seeded, payload)
    assert seeded.call(seeded.snapshot()) == before


def _try_everywhere(seeded: Seeded, payload: str) -> None:
    """Every search kind, each position of ``payload``: refused, or a checked page."""
    store = seeded.store
    attempts = [
        (payload, ()),
        (f"tags.`{payload}` = 'x'", ()),
        (f"params.payload = {payload}", ()),
        (f"metrics.acc > {payload}", ()),
        (f"attributes.run_name IN ({quote(payload)}, {payload})", ()),
        ("", (payload,)),
        ("", (f"metrics.`{payload}` DESC",)),
    ]
    for filter_string, order_by in attempts:
        for kind in SEARCHES:  # one kind refusing it does not excuse the others
            seeded.searched(kind, filter_string, order_by)
    mine = {r for r, p in seeded.run_payload.items() if p == payload}
    for text in (f"tags.payload = {quote(payload)}", f"params.payload = {quote(payload)}"):
        assert {r.info.run_id for r in seeded.call(store.runs.search([seeded.exp], text))} == mine, text
