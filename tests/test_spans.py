"""Span ingestion and span queries, on every backend."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from sqlalchemy import event, select

from asyncstore import AsyncStore
from asyncstore.entities import Span, SpanEvent, SpanStatus, TraceState
from asyncstore.errors import InvalidParameter, NotFound
from asyncstore.schema import spans, trace_info
from tests import dbadmin
from tests.helpers import MS, T0, make_experiment, make_span, mysql_only, new_trace_id
from tests.helpers import count_rows as count


async def trace_row(store: AsyncStore, trace_id: str) -> tuple:
    async with store.uow.transaction(write=False) as conn:
        row = (
            await conn.execute(
                select(trace_info.c.timestamp_ms, trace_info.c.execution_time_ms, trace_info.c.status).where(
                    trace_info.c.request_id == trace_id
                )
            )
        ).one()
        return tuple(row)


async def test_log_spans_round_trip_full_content(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    tid = new_trace_id()
    root = make_span(
        tid,
        name="agent",
        span_type="AGENT",
        end_time_unix_nano=T0 + 100 * MS,
        kind="SERVER",
        status_message="",
        resource={"service.name": "svc", "pids": [1, 2]},
        attributes={"input": {"q": "hi ✓ 😀"}, "list": [1, 2.5, "x"], "flag": True, "none": None},
    )
    child = make_span(
        tid,
        parent_span_id=root.span_id,
        name="llm",
        span_type="LLM",
        start_time_unix_nano=T0 + 10 * MS,
        end_time_unix_nano=T0 + 60 * MS,
        status=SpanStatus.ERROR,
        status_message="boom",
        events=(SpanEvent("exception", T0 + 50 * MS, {"exception.message": "boom"}),),
    )
    assert await store.spans.log_spans(exp, [child, root]) == 2
    got = await store.spans.get_spans(tid)
    assert got == [root, child]  # parent first, every field equal
    assert got[1].duration_ns == 50 * MS
    assert await trace_row(store, tid) == (T0 // MS, 100, TraceState.OK.value)
    async with store.uow.transaction(write=False) as conn:
        stored = (
            await conn.execute(
                select(spans.c.duration_ns, spans.c.type, spans.c.status, spans.c.parent_span_id)
                .where(spans.c.span_id == child.span_id)
            )
        ).one()
    assert tuple(stored) == (50 * MS, "LLM", "ERROR", root.span_id)


async def test_open_root_keeps_trace_in_progress_until_root_ends(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    tid = new_trace_id()
    root = make_span(tid, end_time_unix_nano=None, status=SpanStatus.UNSET)
    child = make_span(tid, parent_span_id=root.span_id, start_time_unix_nano=T0 + MS, end_time_unix_nano=T0 + 3 * MS)
    await store.spans.log_spans(exp, [root, child])
    assert await trace_row(store, tid) == (T0 // MS, 3, "IN_PROGRESS")
    # The exporter re-sends the root once it ended, with an error: the row is overwritten.
    ended = make_span(tid, root.span_id, end_time_unix_nano=T0 + 20 * MS, status=SpanStatus.ERROR)
    await store.spans.log_spans(exp, [ended])
    assert await trace_row(store, tid) == (T0 // MS, 20, "ERROR")
    assert await count(store, spans) == 2
    got = {s.span_id: s for s in await store.spans.get_spans(tid)}
    assert got[root.span_id] == ended
    # A finished trace keeps its state when a late span arrives, but widens its range.
    late_start = T0 - 5 * MS
    late = make_span(tid, parent_span_id=root.span_id, start_time_unix_nano=late_start, end_time_unix_nano=T0 + 30 * MS)
    await store.spans.log_spans(exp, [late])
    assert await trace_row(store, tid) == (late_start // MS, 35, "ERROR")


async def test_resent_spans_overwrite_without_duplicates(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    tids = [new_trace_id() for _ in range(3)]
    batch = [make_span(t) for t in tids for _ in range(4)]
    await store.spans.log_spans(exp, batch)
    renamed = [make_span(s.trace_id, s.span_id, name="renamed") for s in batch]
    # Same span twice in one batch: the last one wins.
    assert await store.spans.log_spans(exp, renamed + [renamed[0]]) == 12
    assert await count(store, spans) == 12
    assert await count(store, trace_info) == 3
    for tid in tids:
        assert {s.name for s in await store.spans.get_spans(tid)} == {"renamed"}


async def test_large_resent_batch_overwrites_and_new_spans_join(store: AsyncStore) -> None:
    """A batch big enough for PostgreSQL's COPY path that re-sends stored spans falls
    back to the upsert in the same transaction: stored spans are overwritten, new
    ones added, nothing duplicated (the same promise on every backend)."""
    exp = await make_experiment(store)
    tids = [new_trace_id() for _ in range(10)]
    first = [make_span(tids[i % 10], attributes={"i": i}) for i in range(300)]
    assert await store.spans.log_spans(exp, first) == 300
    resent = [make_span(s.trace_id, s.span_id, name="again") for s in first[:150]]
    fresh = [make_span(tids[i % 10], name="new") for i in range(150)]
    assert await store.spans.log_spans(exp, resent + fresh) == 300
    assert await count(store, spans) == 450
    names: dict[str, int] = {}
    for tid in tids:
        for span in await store.spans.get_spans(tid):
            names[span.name] = names.get(span.name, 0) + 1
    assert names == {"again": 150, "step": 150, "new": 150}


async def test_large_batch_spans_many_statements_chunks(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    tids = [new_trace_id() for _ in range(200)]
    batch = [
        make_span(tids[i % 200], start_time_unix_nano=T0 + i, end_time_unix_nano=T0 + i + 10, attributes={"i": i})
        for i in range(12_000)
    ]
    statements: list[tuple[str, bool]] = []

    def record(conn: object, cursor: object, statement: str, parameters: object, context: object, many: bool) -> None:
        statements.append((statement.strip(), many))

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        assert await store.spans.log_spans(exp, batch) == 12_000
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)
    assert await count(store, spans) == 12_000
    assert await count(store, trace_info) == 200
    # Every statement counts, those sent straight to the driver too (PostgreSQL's COPY
    # and savepoints, SQLite's executemany); only transaction control is left out.
    sent = [(s, many) for s, many in statements if not s.upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    trace_writes = [s for s, _ in sent if s.startswith("INSERT INTO trace_info")]
    checks = [s for s, _ in sent if s.startswith("SELECT")]
    span_writes = [
        (s, many) for s, many in sent if s.startswith(("INSERT INTO spans", "COPY spans", "LOAD DATA LOCAL INFILE"))
    ]
    assert len(trace_writes) == 1 and len(checks) == 1, sent
    # New spans on the servers: one bulk statement (PostgreSQL COPY; MySQL LOAD DATA, the
    # rows streamed, REPLACE for re-sent ones) under a savepoint.
    bulk = {"postgresql": ("COPY spans (", "asyncstore_load_spans"), "mysql": ("LOAD DATA LOCAL", "asyncstore_load_spans")}
    if store.backend in bulk:
        statement, savepoint = bulk[store.backend]
        assert len(span_writes) == 1 and span_writes[0][0].startswith(statement), sent
        assert [s for s, _ in sent if "SAVEPOINT" in s] == [f"SAVEPOINT {savepoint}", f"RELEASE SAVEPOINT {savepoint}"], sent
    else:
        # ceil(12000 / 5000) executemany upserts.
        assert len(span_writes) == 3 and all(many for _, many in span_writes), sent
    # MLflow's trace tags (spans location, artifact location): one upsert for the batch.
    assert len([s for s, _ in sent if s.startswith("INSERT INTO trace_tags")]) == 1, sent
    # Bounded: trace upsert, experiment check, tag upsert, and the span statements.
    assert len(sent) == 6, sent


async def test_bad_spans_write_nothing(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    tid = new_trace_id()
    good = make_span(tid)
    bad_cases = [
        (make_span("tr-123"), "trace_id"),
        (make_span(tid, "xyz"), "span_id"),
        (make_span(tid, parent_span_id="ABCDEF0123456789"), "parent_span_id"),
        (make_span(tid, start_time_unix_nano=T0, end_time_unix_nano=T0 - 1), "before"),
        (make_span(tid, attributes={"obj": object()}), "JSON"),
        (make_span(tid, start_time_unix_nano=None), "start_time_unix_nano"),
        (make_span(tid, status="BROKEN"), "status"),
        ("not a span", "Span"),
    ]
    for bad, words in bad_cases:
        with pytest.raises(InvalidParameter, match=words) as info:
            await store.spans.log_spans(exp, [good, bad])
        assert "span #1" in str(info.value)
    assert await count(store, spans) == 0
    assert await count(store, trace_info) == 0


async def test_unknown_experiment_and_foreign_trace(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    other = await make_experiment(store)
    tid = new_trace_id()
    with pytest.raises(NotFound, match=f"experiment {exp + 1000} does not exist"):
        await store.spans.log_spans(exp + 1000, [make_span(tid)])
    await store.spans.log_spans(exp, [make_span(tid)])
    fresh = new_trace_id()
    with pytest.raises(InvalidParameter, match=f"belongs to experiment {exp}"):
        await store.spans.log_spans(other, [make_span(fresh), make_span(tid)])
    assert await count(store, trace_info) == 1  # the fresh trace was rolled back
    with pytest.raises(InvalidParameter, match="experiment_id"):
        await store.spans.log_spans("abc", [make_span(tid)])
    assert await store.spans.log_spans(str(exp), []) == 0


async def test_get_spans_of_unknown_trace(store: AsyncStore) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        await store.spans.get_spans(new_trace_id())
    with pytest.raises(InvalidParameter, match="trace_id"):
        await store.spans.get_spans("nope")


async def test_concurrent_ingesters_overlapping_traces(store: AsyncStore) -> None:
    """Several tasks re-send overlapping spans of the same traces in different orders."""
    exp = await make_experiment(store)
    tids = [new_trace_id() for _ in range(6)]
    all_spans = [make_span(t, attributes={"t": t}) for t in tids for _ in range(20)]

    async def ingest(seed: int) -> None:
        order = all_spans[seed:] + all_spans[:seed]
        for i in range(0, len(order), 30):
            await store.spans.log_spans(exp, order[i : i + 30][::-1] if seed % 2 else order[i : i + 30])

    await asyncio.gather(*(ingest(seed) for seed in range(0, 60, 10)))
    assert await count(store, spans) == len(all_spans)
    assert await count(store, trace_info) == len(tids)


async def test_search_spans_filters_and_pages(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    other = await make_experiment(store)
    tid = new_trace_id()
    batch = [
        make_span(
            tid,
            name=f"s{i % 3}",
            span_type="LLM" if i % 2 else "TOOL",
            status=SpanStatus.ERROR if i % 5 == 0 else SpanStatus.OK,
            start_time_unix_nano=T0 + i * MS,
            end_time_unix_nano=T0 + i * MS + (i % 7) * 1000,
        )
        for i in range(40)
    ]
    open_span = make_span(tid, name="open", start_time_unix_nano=T0 + 100 * MS, end_time_unix_nano=None)
    await store.spans.log_spans(exp, [*batch, open_span])
    await store.spans.log_spans(other, [make_span(new_trace_id(), span_type="LLM")])

    async def collect(**kwargs: object) -> list[Span]:
        out: list[Span] = []
        token = None
        while True:
            page = await store.spans.search_spans(exp, max_results=7, page_token=token, **kwargs)  # type: ignore[arg-type]
            out.extend(page)
            token = page.next_page_token
            if token is None:
                return out

    everything = await collect()
    assert [s.span_id for s in everything] == [s.span_id for s in [*batch, open_span]]
    llm_errors = await collect(type="LLM", status="ERROR")
    assert {s.span_id for s in llm_errors} == {
        s.span_id for s in batch if s.span_type == "LLM" and s.status is SpanStatus.ERROR
    }
    by_duration = await collect(order_by="duration", descending=True, min_duration_ns=2000, max_duration_ns=5000)
    expected = sorted(
        (s for s in batch if 2000 <= (s.duration_ns or 0) <= 5000),
        key=lambda s: (s.duration_ns, s.trace_id, s.span_id),
        reverse=True,
    )
    assert [s.span_id for s in by_duration] == [s.span_id for s in expected]
    named = await collect(name="s1")
    assert named and all(s.name == "s1" for s in named)
    with pytest.raises(InvalidParameter, match="different query"):
        first = await store.spans.search_spans(exp, max_results=2)
        assert first.next_page_token is not None
        await store.spans.search_spans(exp, name="s1", page_token=first.next_page_token)
    for bad in ({"order_by": "name"}, {"max_results": 0}, {"status": "MAYBE"}, {"min_duration_ns": -1}):
        with pytest.raises(InvalidParameter):
            await store.spans.search_spans(exp, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("force_json", [False, True], ids=["default-encoder", "json-module"])
async def test_content_encoding_same_with_orjson_or_the_json_module(
    store: AsyncStore, monkeypatch: pytest.MonkeyPatch, force_json: bool
) -> None:
    """The json module encodes what orjson refuses: what is accepted and read back must not depend on the encoder."""
    from asyncstore.tracing import content

    if force_json:
        def refuse(doc: object, option: int = 0) -> bytes:
            raise TypeError("refused")

        monkeypatch.setattr(content.orjson, "dumps", refuse)  # the json module encodes everything
    exp = await make_experiment(store)
    tid = new_trace_id()
    odd = {
        "nan": float("nan"), "inf": float("-inf"), "big": 2**70, "uuid": uuid.UUID(int=1),
        "status": SpanStatus.ERROR, 3: "int key", "nested": {"t": (1, 2)}, "emoji": "😀", "nul": "a\x00b",
    }
    span = make_span(tid, attributes=odd)
    await store.spans.log_spans(exp, [span])
    (got,) = await store.spans.get_spans(tid)
    assert got.attributes == {
        "nan": None, "inf": None, "big": 2**70, "uuid": str(uuid.UUID(int=1)), "status": "ERROR",
        "3": "int key", "nested": {"t": [1, 2]}, "emoji": "😀", "nul": "a\x00b",
    }
    cyclic: dict[str, object] = {}
    cyclic["self"] = cyclic
    for bad in ({"obj": object()}, {"when": __import__("datetime").datetime(2024, 1, 1)}, cyclic):
        with pytest.raises(InvalidParameter, match="JSON"):
            await store.spans.log_spans(exp, [make_span(tid, attributes=bad)])


@mysql_only
async def test_a_server_that_refuses_local_infile_gets_the_upsert_once_and_for_all(
    store: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    """MySQL/MariaDB: with the server's local_infile off, the first large batch is
    refused LOAD DATA, says so in one log line, and is written by the upsert; later
    batches go straight to the upsert. Nothing is lost or duplicated."""
    exp = await make_experiment(store)
    tids = [new_trace_id() for _ in range(5)]
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.strip())

    await _set_local_infile(False)
    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        with caplog.at_level(logging.WARNING, logger="asyncstore.tracing.ingest"):
            for round_ in range(3):
                batch = [make_span(tids[i % 5], name=f"r{round_}") for i in range(150)]
                assert await store.spans.log_spans(exp, batch) == 150
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)
        await _set_local_infile(True)
    assert await count(store, spans) == 450
    refusals = [r for r in caplog.records if "refuses LOAD DATA LOCAL INFILE" in r.getMessage()]
    assert len(refusals) == 1
    assert len([s for s in statements if s.startswith("LOAD DATA")]) == 1  # tried once, then never
    assert len([s for s in statements if s.startswith("INSERT INTO spans")]) == 3


async def _set_local_infile(on: bool) -> None:
    async with dbadmin.mysql_cursor(dbadmin.server_url("mysql")) as cur:
        await cur.execute(f"SET GLOBAL local_infile = {1 if on else 0}")


async def test_a_large_batch_round_trips_every_character_through_the_bulk_path(store: AsyncStore) -> None:
    """Text that LOAD DATA and COPY must escape (tabs, newlines, backslashes, NUL-free
    control characters, 4-byte UTF-8, the \\N marker itself) reads back exactly."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    tricky = "tab\there\nnewline\\backslash \\N \r\x01 \U0001f600 é"
    batch = [make_span(tid, name=f"{tricky}{i}", attributes={"text": tricky, "i": i}) for i in range(150)]
    assert await store.spans.log_spans(exp, batch) == 150
    stored = {s.span_id: s for s in await store.spans.get_spans(tid)}
    for sent in batch:
        got = stored[sent.span_id]
        assert (got.name, got.attributes) == (sent.name, sent.attributes)
