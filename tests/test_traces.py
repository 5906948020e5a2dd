"""Traces: start/update/end, tags, metadata, metrics, get, delete and search, on every backend."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from asyncstore import AsyncStore
from asyncstore.entities import SpanStatus, TraceState
from asyncstore.errors import AlreadyExists, InvalidParameter, NotFound
from asyncstore.schema import spans, trace_info, trace_metrics, trace_request_metadata, trace_tags
from tests.helpers import MS, T0, make_experiment, make_span, new_trace_id


async def rows(store: AsyncStore, table: object) -> int:
    async with store.uow.transaction(write=False) as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def test_start_update_end_and_read_back(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    info = await store.traces.start(
        exp, timestamp_ms=1000, client_request_id="req-1", request_preview="q" * 1500,
        tags={"user": "ann"}, metadata={"mlflow.source": "test"},
    )
    assert info.trace_id.startswith("tr-") and len(info.trace_id) == 35
    assert info.experiment_id == str(exp)
    assert info.state is TraceState.IN_PROGRESS
    assert info.request_preview == "q" * 1000  # previews are cut, not refused
    # MLflow's start_trace adds the infoFinalized metadata (and an artifact location tag
    # when the experiment has an artifact location; this one has none).
    assert (info.tags, info.metadata, info.client_request_id) == (
        {"user": "ann"}, {"mlflow.source": "test", "mlflow.trace.infoFinalized": "true"}, "req-1"
    )
    ended = await store.traces.end(info.trace_id, state="ERROR", execution_time_ms=42, response_preview="r")
    assert (ended.state, ended.execution_time_ms, ended.response_preview) == (TraceState.ERROR, 42, "r")
    updated = await store.traces.update(info.trace_id, request_preview="new")
    assert updated.request_preview == "new" and updated.state is TraceState.ERROR
    assert await store.traces.get_info(info.trace_id) == updated
    with pytest.raises(InvalidParameter, match="final state"):
        await store.traces.end(info.trace_id, state="IN_PROGRESS")
    with pytest.raises(NotFound):
        await store.traces.update(new_trace_id(), state="OK")
    with pytest.raises(InvalidParameter, match="state"):
        await store.traces.start(exp, state="DONE")
    with pytest.raises(InvalidParameter, match="trace_id"):
        await store.traces.start(exp, trace_id="tr-XYZ")
    with pytest.raises(NotFound, match="experiment"):
        await store.traces.start(exp + 999)


async def test_start_completes_row_created_by_spans(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    tid = new_trace_id()
    root = make_span(tid, end_time_unix_nano=T0 + 7 * MS)
    await store.spans.log_spans(exp, [root])
    info = await store.traces.start(
        exp, trace_id=tid, timestamp_ms=T0 // MS + 50, state="OK", request_preview="hello", tags={"a": "1"}
    )
    # The earliest timestamp and the span-derived duration are kept; given fields are set.
    assert (info.timestamp_ms, info.execution_time_ms, info.state) == (T0 // MS, 7, TraceState.OK)
    # log_spans tagged the trace as MLflow's does: its spans are in the tracking store.
    located = {"mlflow.trace.spansLocation": "TRACKING_STORE"}
    assert info.request_preview == "hello" and info.tags == {"a": "1", **located}
    again = await store.traces.start(exp, trace_id=tid, timestamp_ms=T0 // MS, tags={"b": "2"}, metadata={"m": "x"})
    assert again.tags == {"a": "1", "b": "2", **located}
    assert again.metadata == {"m": "x", "mlflow.trace.infoFinalized": "true"}
    assert again.request_preview == "hello"  # not given: kept
    other = await make_experiment(store)
    with pytest.raises(AlreadyExists, match=f"experiment {exp}"):
        await store.traces.start(other, trace_id=tid)


async def test_tags_metadata_metrics(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    tid = (await store.traces.start(exp)).trace_id
    await store.traces.set_tag(tid, "k", "v" * 8000)
    await store.traces.set_tag(tid, "k2", "x")
    await store.traces.set_tag(tid, "k2", "y")  # overwrite
    await store.traces.delete_tag(tid, "k2")
    await store.traces.set_metadata(tid, {"a": "1", "b": "2"})
    await store.traces.set_metrics(tid, {"latency": 1.5, "tokens": 10})
    await store.traces.set_metrics(tid, {"latency": 2.5})
    info = await store.traces.get_info(tid)
    assert info.tags == {"k": "v" * 8000}
    assert info.metadata == {"a": "1", "b": "2", "mlflow.trace.infoFinalized": "true"}
    assert info.metrics == {"latency": 2.5, "tokens": 10.0}
    with pytest.raises(InvalidParameter, match="8000"):
        await store.traces.set_tag(tid, "k", "v" * 8001)
    with pytest.raises(InvalidParameter, match="250"):
        await store.traces.set_tag(tid, "k" * 251, "v")
    with pytest.raises(InvalidParameter, match="finite"):
        await store.traces.set_metrics(tid, {"bad": float("nan")})
    with pytest.raises(NotFound):
        await store.traces.delete_tag(tid, "missing")
    with pytest.raises(NotFound):
        await store.traces.set_tag(new_trace_id(), "k", "v")
    with pytest.raises(NotFound):
        await store.traces.set_metrics(new_trace_id(), {"x": 1.0})


async def test_get_returns_spans_parent_first(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    tid = new_trace_id()
    root = make_span(tid, end_time_unix_nano=T0 + 10 * MS)
    a = make_span(tid, parent_span_id=root.span_id, start_time_unix_nano=T0 + 2 * MS)
    b = make_span(tid, parent_span_id=root.span_id, start_time_unix_nano=T0 + 1 * MS)
    a1 = make_span(tid, parent_span_id=a.span_id, start_time_unix_nano=T0 + 3 * MS)
    await store.spans.log_spans(exp, [a1, a, b, root])
    trace = await store.traces.get(tid)
    assert [s.span_id for s in trace.spans] == [root.span_id, b.span_id, a.span_id, a1.span_id]
    assert trace.info.trace_id == tid
    with pytest.raises(NotFound):
        await store.traces.get(new_trace_id())


async def test_delete_by_ids_and_by_age_in_bounded_chunks(store: AsyncStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from asyncstore.tracing import delete as trace_delete

    monkeypatch.setattr(trace_delete, "DELETE_SPAN_CHUNK", 7)  # force several span transactions
    monkeypatch.setattr(trace_delete, "DELETE_TRACE_CHUNK", 2)
    exp = await make_experiment(store)
    other = await make_experiment(store)
    tids = [new_trace_id() for _ in range(6)]
    for i, tid in enumerate(tids):
        start = T0 + i * 1000 * MS
        batch = [make_span(tid, start_time_unix_nano=start, end_time_unix_nano=start + MS) for _ in range(10)]
        await store.spans.log_spans(exp, batch)
        await store.traces.set_tag(tid, "k", "v")
        await store.traces.set_metadata(tid, {"m": "v"})
        await store.traces.set_metrics(tid, {"x": 1.0})
    foreign = new_trace_id()
    await store.spans.log_spans(other, [make_span(foreign)])
    # trace_ids: only this experiment's traces go.
    assert await store.traces.delete(exp, trace_ids=[tids[0], foreign]) == 1
    # Oldest first, at most max_traces.
    assert await store.traces.delete(exp, max_timestamp_ms=T0 // MS + 10_000, max_traces=3) == 3
    remaining = {t.trace_id for t in await store.traces.search([exp], order_by=["timestamp_ms ASC"])}
    assert remaining == set(tids[4:])
    assert await store.traces.delete(exp, max_timestamp_ms=T0 // MS + 10_000) == 2
    assert await rows(store, trace_info) == 1  # the other experiment's trace
    assert await rows(store, spans) == 1
    assert await rows(store, trace_tags) == 1  # the other trace's mlflow.trace.spansLocation
    for table in (trace_request_metadata, trace_metrics):
        assert await rows(store, table) == 0
    for bad in (
        {},
        {"max_timestamp_ms": 1, "trace_ids": [foreign]},
        {"trace_ids": [foreign], "max_traces": 1},
        {"max_timestamp_ms": 1, "max_traces": 0},
    ):
        with pytest.raises(InvalidParameter):
            await store.traces.delete(exp, **bad)  # type: ignore[arg-type]


async def test_search_filters_order_and_pages(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    other = await make_experiment(store)
    expected: dict[str, dict[str, object]] = {}
    for i in range(25):
        info = await store.traces.start(
            exp,
            timestamp_ms=1000 + (i // 2),  # ties on timestamp: the trace id breaks them
            execution_time_ms=None if i % 6 == 0 else i * 10,
            state="ERROR" if i % 4 == 0 else "OK",
            client_request_id=f"req-{i}",
            tags={"env": "prod" if i % 2 else "dev", "Label": f"Run{i}"},
            metadata={"user": f"u{i % 3}"},
        )
        expected[info.trace_id] = {"i": i}
        if i % 5 == 0:
            await store.spans.log_spans(
                exp,
                [
                    make_span(
                        info.trace_id, name="retriever", span_type="RETRIEVER", status=SpanStatus.ERROR,
                        start_time_unix_nano=(1000 + i // 2) * MS, end_time_unix_nano=(1000 + i // 2) * MS + MS,
                    )
                ],
            )
    await store.traces.start(other, timestamp_ms=5000, tags={"env": "prod"})

    async def ids(filter_string: str = "", order: str = "timestamp_ms DESC", size: int = 4) -> list[str]:
        out: list[str] = []
        token = None
        while True:
            page = await store.traces.search([exp], filter_string, [order], max_results=size, page_token=token)
            out += [t.trace_id for t in page]
            token = page.next_page_token
            if token is None:
                return out

    by_i = {tid: int(v["i"]) for tid, v in expected.items()}  # type: ignore[call-overload]
    everything = await ids()
    # As MLflow: ties on the order keys are broken by timestamp_ms DESC, then trace id ASC.
    assert everything == sorted(by_i, key=lambda t: (-(1000 + by_i[t] // 2), t))
    assert await ids(order="timestamp_ms ASC", size=7) == sorted(by_i, key=lambda t: (1000 + by_i[t] // 2, t))
    durations = await ids(order="execution_time_ms DESC", size=5)
    stored = {t: (await store.traces.get_info(t)).execution_time_ms for t in by_i}
    assert stored[next(t for t, i in by_i.items() if i == 6)] is None  # unknown durations sort last, as in MLflow
    def newest_first(t: str) -> tuple[int, str]:
        return -(1000 + by_i[t] // 2), t

    known = sorted((t for t in by_i if stored[t] is not None), key=lambda t: (-(stored[t] or 0), *newest_first(t)))
    assert durations == known + sorted((t for t in by_i if stored[t] is None), key=newest_first)

    def where(pred: object) -> set[str]:
        return {t for t, i in by_i.items() if pred(i)}  # type: ignore[operator]

    assert set(await ids("tags.env = 'prod'")) == where(lambda i: i % 2 == 1)
    assert set(await ids("tags.Label LIKE 'Run1%'")) == where(lambda i: str(i).startswith("1"))
    assert set(await ids("tags.Label ILIKE 'run2%'")) == where(lambda i: str(i).startswith("2"))
    assert set(await ids("tags.Label LIKE 'run2%'")) == set()  # LIKE is case-sensitive everywhere
    assert set(await ids("tags.Name LIKE 'Run1%'")) == set()  # as in MLflow, tags.name is the trace name
    assert set(await ids("metadata.user != 'u0'")) == where(lambda i: i % 3 != 0)
    assert set(await ids("status = 'ERROR' AND execution_time_ms > 50")) == where(lambda i: i % 4 == 0 and i % 6 and i * 10 > 50)
    assert set(await ids("attributes.timestamp_ms <= 1003")) == where(lambda i: 1000 + i // 2 <= 1003)
    assert set(await ids("client_request_id = 'req-7'")) == where(lambda i: i == 7)
    assert set(await ids("span.type = 'RETRIEVER' and span.status = 'ERROR'")) == where(lambda i: i % 5 == 0)
    assert set(await ids("span.name LIKE 'retr%' AND tags.env = 'dev'")) == where(lambda i: i % 10 == 0)
    both = await store.traces.search([exp, str(other)], "tags.env = 'prod'", max_results=100)
    assert len(both) == 13
    for bad in ("tags.env >> 'x'", "unknown = 1", "span.duration > 3", "timestamp_ms = 'abc'", "tags.env = 'x' OR"):
        with pytest.raises(InvalidParameter):
            await store.traces.search([exp], bad)
    with pytest.raises(InvalidParameter, match="cannot be used to order"):
        await store.traces.search([exp], order_by=["span.name"])
    with pytest.raises(InvalidParameter, match="names attribute 'timestamp_ms' twice"):
        await store.traces.search([exp], order_by=["timestamp_ms", "timestamp DESC"])
    first = await store.traces.search([exp], max_results=2)
    with pytest.raises(InvalidParameter, match="different query"):
        await store.traces.search([exp], "tags.env = 'prod'", max_results=2, page_token=first.next_page_token)


async def test_search_paging_is_stable_under_inserts(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    first_ids = [(await store.traces.start(exp, timestamp_ms=2000 + i)).trace_id for i in range(10)]
    page = await store.traces.search([exp], max_results=4)
    seen = [t.trace_id for t in page]
    await store.traces.start(exp, timestamp_ms=9999)  # newer than everything: before the cursor
    while page.next_page_token:
        page = await store.traces.search([exp], max_results=4, page_token=page.next_page_token)
        seen += [t.trace_id for t in page]
    assert seen == first_ids[::-1]


async def test_a_pattern_the_database_cannot_compile_is_invalid_parameter(store: AsyncStore) -> None:
    """Promise: an RLIKE pattern that Python's re accepts but the server's regex engine
    rejects ("(?a)" is no option of PostgreSQL's nor of MariaDB's PCRE2) is
    INVALID_PARAMETER, never an internal error; SQLite, which matches with Python's
    re, answers."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    await store.spans.log_spans(exp, [make_span(tid, name="w1")])
    search = store.traces.search([exp], r"span.name RLIKE '(?a)\w1'")
    if store.backend.value == "sqlite":
        assert [t.trace_id for t in (await search).items] == [tid]
    else:
        with pytest.raises(InvalidParameter):
            await search
