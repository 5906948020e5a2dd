"""Traces and spans with the real ``mlflow`` package: what asyncstore writes is what
MLflow 3.17's ``SqlAlchemyStore`` writes and reads, and what MLflow writes reads back
equal through asyncstore. Rows in asyncstore's earlier span format still read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import select, update

from asyncstore import AsyncStore
from asyncstore.entities import Span, SpanEvent, SpanStatus
from asyncstore.errors import InternalError
from asyncstore.schema import spans as spans_table
from tests.helpers import MS, T0, make_experiment, make_span, new_span_id, new_trace_id
from tests.test_mlflow_databases import _mlflow_store, mlflow_uri  # noqa: F401  (fixture)

pytest.importorskip("mlflow")

from mlflow.entities import Span as MlflowSpan  # noqa: E402
from mlflow.entities import SpanEvent as MlflowSpanEvent  # noqa: E402
from mlflow.entities.span import LiveSpan  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

RESERVED = ("mlflow.traceRequestId", "mlflow.spanType")


def _trace(trace_id: str) -> list[Span]:
    """A root and two children with what spans carry: nested and non-ASCII attributes,
    an error with its message, an event, an open span."""
    root_id, llm_id, tool_id = new_span_id(), new_span_id(), new_span_id()
    return [
        make_span(
            trace_id, root_id, name="agent ✓", span_type="AGENT", end_time_unix_nano=T0 + 100 * MS,
            attributes={"mlflow.spanInputs": {"question": "2+2? é"}, "mlflow.spanOutputs": "4", "n": 3, "f": 0.25,
                        "big": 2**70, "below_int64": [-(2**63) - 1]},  # integers orjson would make floats
        ),
        make_span(
            trace_id, llm_id, parent_span_id=root_id, name="llm", span_type="LLM",
            start_time_unix_nano=T0 + 10 * MS, end_time_unix_nano=T0 + 60 * MS,
            status=SpanStatus.ERROR, status_message="rate limited",
            attributes={"messages": [{"role": "user", "content": "hi\n\"there\""}], "flag": True, "none": None},
            events=(SpanEvent("exception", T0 + 50 * MS, {"exception.message": "boom", "codes": [1, 2]}),),
        ),
        make_span(
            trace_id, tool_id, parent_span_id=root_id, name="tool", span_type="TOOL",
            start_time_unix_nano=T0 + 70 * MS, end_time_unix_nano=None, status=SpanStatus.UNSET, attributes={},
        ),
    ]


def _as_mlflow_sees(span: Span) -> dict[str, Any]:
    """What MLflow's Span should say of an asyncstore span."""
    return {
        "trace_id": span.trace_id, "span_id": span.span_id, "parent_id": span.parent_span_id, "name": span.name,
        "start": span.start_time_unix_nano, "end": span.end_time_unix_nano, "span_type": span.span_type,
        # OpenTelemetry keeps a status description for ERROR only.
        "status": (span.status.value, span.status_message if span.status is SpanStatus.ERROR else ""),
        "attributes": {"mlflow.traceRequestId": span.trace_id, "mlflow.spanType": span.span_type, **span.attributes},
        "events": [(e.name, e.timestamp_unix_nano, e.attributes) for e in span.events],
    }


def _mlflow_span_fields(span: MlflowSpan) -> dict[str, Any]:
    return {
        "trace_id": span.trace_id, "span_id": span.span_id, "parent_id": span.parent_id, "name": span.name,
        "start": span.start_time_ns, "end": span.end_time_ns, "span_type": span.span_type,
        "status": (span.status.status_code.value, span.status.description),
        "attributes": span.attributes,
        "events": [(e.name, e.timestamp, e.attributes) for e in span.events],
    }


async def _contents(store: AsyncStore, trace_id: str) -> dict[str, str]:
    async with store.uow.transaction(write=False) as conn:
        rows = await conn.execute(
            select(spans_table.c.span_id, spans_table.c.content).where(spans_table.c.trace_id == trace_id)
        )
        return {span_id: content for span_id, content in rows.all()}


def test_content_is_what_mlflow_log_spans_writes(backend: str, mlflow_uri: str) -> None:  # noqa: F811
    """The content asyncstore writes is, character for character, what MLflow's
    log_spans writes for the same spans (rebuilt by MLflow from asyncstore's rows)."""
    trace_id = new_trace_id()
    written = _trace(trace_id)

    async def write() -> dict[str, str]:
        async with AsyncStore.open(mlflow_uri) as store:
            await store.spans.log_spans("0", written)
            return await _contents(store, trace_id)

    ours = asyncio.run(write())
    ml = _mlflow_store(mlflow_uri, backend)
    try:
        ml.log_spans("0", [MlflowSpan.from_dict(json.loads(c)) for c in ours.values()])  # overwrites the rows
        trace = ml.get_trace(trace_id)
    finally:
        ml.engine.dispose()
    assert sorted(_mlflow_span_fields(s)["span_id"] for s in trace.data.spans) == sorted(ours)

    async def reread() -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            assert await _contents(store, trace_id) == ours
            assert await store.spans.get_spans(trace_id) == written

    asyncio.run(reread())


def test_asyncstore_writes_and_mlflow_reads_equal(backend: str, mlflow_uri: str) -> None:  # noqa: F811
    """MLflow's get_trace and search_traces read the spans and trace asyncstore logged,
    with the tags MLflow's log_spans sets."""
    trace_id = new_trace_id()
    written = _trace(trace_id)

    async def write() -> str:
        async with AsyncStore.open(mlflow_uri) as store:
            exp = await store.experiments.create("traced")
            await store.spans.log_spans(exp, written)
            info = await store.traces.get_info(trace_id)
            location = (await store.experiments.get(exp)).artifact_location
            assert info.tags == {
                "mlflow.trace.spansLocation": "TRACKING_STORE",
                "mlflow.artifactLocation": f"{location}/traces/{trace_id}/artifacts",
            }
            return str(exp)

    exp = asyncio.run(write())
    ml = _mlflow_store(mlflow_uri, backend)
    try:
        trace = ml.get_trace(trace_id)
        found, _ = ml.search_traces([exp])
    finally:
        ml.engine.dispose()
    got = sorted((_mlflow_span_fields(s) for s in trace.data.spans), key=lambda f: f["span_id"])
    assert got == sorted((_as_mlflow_sees(s) for s in written), key=lambda f: f["span_id"])
    assert [t.trace_id for t in found] == [trace_id]
    assert trace.info.tags["mlflow.trace.spansLocation"] == "TRACKING_STORE"
    assert (trace.info.request_time, trace.info.execution_duration, trace.info.state.value) == (
        T0 // MS, 100, "OK"
    )


def _mlflow_spans(trace_id: str) -> list[MlflowSpan]:
    """Spans made by MLflow's own span classes over OpenTelemetry SDK spans."""
    tracer = TracerProvider().get_tracer("test")
    root_otel = tracer.start_span("agent", start_time=T0)
    root = LiveSpan(root_otel, trace_id, span_type="AGENT")
    root.set_inputs({"question": "2+2? é"})
    root.set_outputs("4")
    from opentelemetry import trace as otel_trace

    ctx = otel_trace.set_span_in_context(root_otel)
    child_otel = tracer.start_span("llm", context=ctx, start_time=T0 + 10 * MS)
    child = LiveSpan(child_otel, trace_id, span_type="LLM")
    child.set_attribute("messages", [{"role": "user", "content": "hi"}])
    child.add_event(MlflowSpanEvent("exception", T0 + 50 * MS, {"exception.message": "boom"}))
    child.set_status("ERROR")
    child_otel.end(end_time=T0 + 60 * MS)
    root.set_status("OK")
    root_otel.end(end_time=T0 + 100 * MS)
    return [MlflowSpan(root_otel), MlflowSpan(child_otel)]


def test_mlflow_writes_and_asyncstore_reads_equal(backend: str, mlflow_uri: str) -> None:  # noqa: F811
    """Spans MLflow's log_spans stored read back through traces.get, spans.get_spans
    and spans.search_spans as the same spans."""
    trace_id = new_trace_id()
    made = _mlflow_spans(trace_id)
    ml = _mlflow_store(mlflow_uri, backend)
    try:
        ml.log_spans("0", made)
    finally:
        ml.engine.dispose()
    expected = sorted((_mlflow_span_fields(s) for s in made), key=lambda f: f["span_id"])

    async def read() -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            trace = await store.traces.get(trace_id)
            assert [s.name for s in trace.spans] == ["agent", "llm"]
            assert trace.info.tags["mlflow.trace.spansLocation"] == "TRACKING_STORE"
            for spans in (
                list(trace.spans),
                await store.spans.get_spans(trace_id),
                list((await store.spans.search_spans("0")).items),
            ):
                got = sorted((_as_mlflow_sees(s) for s in spans), key=lambda f: f["span_id"])
                assert got == expected

    asyncio.run(read())


def test_mlflow_decodes_what_asyncstore_writes_without_a_database() -> None:
    """MLflow's Span.from_dict reads a content asyncstore encoded; asyncstore decodes the
    JSON of MLflow's Span.to_dict."""
    from asyncstore.tracing import content
    from asyncstore.tracing.rows import prepare

    trace_id = new_trace_id()
    for span in _trace(trace_id):
        (row,) = prepare([span], 1).span_rows
        text = row[-1]
        assert _mlflow_span_fields(MlflowSpan.from_dict(json.loads(text))) == _as_mlflow_sees(span)
    for made in _mlflow_spans(trace_id):
        decoded = content.decode(json.dumps(made.to_dict(), ensure_ascii=False), trace_id, made.span_id)
        assert _as_mlflow_sees(decoded) == _mlflow_span_fields(made)


async def test_rows_in_the_earlier_format_still_read(store: AsyncStore) -> None:
    """A span row asyncstore wrote before it wrote MLflow's format reads back equal."""
    exp = await make_experiment(store)
    trace_id = new_trace_id()
    span = make_span(
        trace_id, span_type="LLM", kind="SERVER", resource={"service.name": "svc"}, status_message="",
        events=(SpanEvent("e", T0 + MS, {"a": 1}),),
    )
    await store.spans.log_spans(exp, [span])
    earlier = json.dumps({  # the document asyncstore wrote until this format change
        "trace_id": span.trace_id, "span_id": span.span_id, "parent_span_id": None, "name": span.name,
        "span_type": "LLM", "status": "OK", "status_message": "", "kind": "SERVER",
        "start_time_unix_nano": span.start_time_unix_nano, "end_time_unix_nano": span.end_time_unix_nano,
        "attributes": span.attributes, "events": [{"name": "e", "timestamp_unix_nano": T0 + MS, "attributes": {"a": 1}}],
        "resource": {"service.name": "svc"},
    })
    async with store.uow.transaction() as conn:
        await conn.execute(update(spans_table).where(spans_table.c.span_id == span.span_id).values(content=earlier))
    assert await store.spans.get_spans(trace_id) == [span]
    assert (await store.traces.get(trace_id)).spans == (span,)
    assert (await store.spans.search_spans(exp)).items == [span]


async def test_a_row_that_cannot_be_decoded_is_an_internal_error_naming_it(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    trace_id = new_trace_id()
    span = make_span(trace_id)
    await store.spans.log_spans(exp, [span])
    for bad in ('{"trace_id": "x"}', "not json", "[1, 2]", '{"status": {"code": "NOPE"}, "span_id": "AAAAAAAAAAA="}'):
        async with store.uow.transaction() as conn:
            await conn.execute(update(spans_table).where(spans_table.c.span_id == span.span_id).values(content=bad))
        for read in (store.spans.get_spans(trace_id), store.traces.get(trace_id), store.spans.search_spans(exp)):
            with pytest.raises(InternalError, match=f"spans row .*{trace_id}.*{span.span_id}"):
                await read


_ANALYTICS_TAGS = {"mlflow.traceName": "chat turn", "team": "a"}
_ANALYTICS_METADATA = {
    "mlflow.trace.session": "session-7",
    "mlflow.trace.tokenUsage": '{"input_tokens": 12, "output_tokens": 30, "total_tokens": 42}',
    "mlflow.trace.cost": '{"input_cost": 0.001, "total_cost": 0.004}',
    "note": "kept as a row",
}


def test_trace_name_session_tokens_and_cost_both_ways(backend: str, mlflow_uri: str) -> None:  # noqa: F811
    """Promise: the trace name, session, token usage and cost MLflow's start_trace
    stored (in trace_info's columns) read back through asyncstore as MLflow's
    get_trace_info reads them, and the other way round; each store's search on the
    name and session finds the other's trace."""
    from mlflow.entities import TraceInfo as MlflowTraceInfo
    from mlflow.entities import TraceLocation, TraceState

    by_mlflow, by_asyncstore = new_trace_id(), new_trace_id()

    async def write(exp: str) -> None:
        async with AsyncStore.open(mlflow_uri) as store:
            await store.traces.start(exp, trace_id=by_asyncstore, timestamp_ms=T0 // MS, state="OK",
                                     tags=_ANALYTICS_TAGS, metadata=_ANALYTICS_METADATA)

    ml = _mlflow_store(mlflow_uri, backend)
    try:
        exp = ml.create_experiment("analytics")
        ml.start_trace(MlflowTraceInfo(
            trace_id=by_mlflow, trace_location=TraceLocation.from_experiment_id(exp), request_time=T0 // MS + 1,
            state=TraceState.OK, tags=dict(_ANALYTICS_TAGS), trace_metadata=dict(_ANALYTICS_METADATA),
        ))
        asyncio.run(write(exp))
        mlflow_reads = {tid: ml.get_trace_info(tid) for tid in (by_mlflow, by_asyncstore)}
        mlflow_finds = [
            [t.trace_id for t in ml.search_traces([exp], filter_string=f)[0]]
            for f in ("tags.`mlflow.traceName` = 'chat turn'", "metadata.`mlflow.trace.session` = 'session-7'")
        ]
    finally:
        ml.engine.dispose()

    async def read() -> tuple[dict[str, Any], list[list[str]]]:
        async with AsyncStore.open(mlflow_uri) as store:
            infos = {tid: await store.traces.get_info(tid) for tid in (by_mlflow, by_asyncstore)}
            found = [
                [t.trace_id for t in (await store.traces.search([exp], f)).items]
                for f in ("tags.`mlflow.traceName` = 'chat turn'", "metadata.`mlflow.trace.session` = 'session-7'")
            ]
            return infos, found

    ours, our_finds = asyncio.run(read())
    for tid in (by_mlflow, by_asyncstore):
        assert ours[tid].tags == mlflow_reads[tid].tags, tid
        assert ours[tid].metadata == mlflow_reads[tid].trace_metadata, tid
        assert {k: ours[tid].metadata[k] for k in _ANALYTICS_METADATA} == _ANALYTICS_METADATA, tid
        assert ours[tid].tags["mlflow.traceName"] == "chat turn"
    both = sorted([by_mlflow, by_asyncstore])
    assert [sorted(ids) for ids in mlflow_finds] == [both, both]
    assert [sorted(ids) for ids in our_finds] == [both, both]
