"""OpenTelemetry input: real SDK spans and OTLP requests, converted, ingested, read back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from asyncstore import AsyncStore
from asyncstore.entities import SpanStatus, TraceState
from asyncstore.errors import InvalidParameter
from asyncstore.otel import from_otlp_request, from_readable_spans, span_type_of
from tests.helpers import make_experiment


def sdk_spans() -> Sequence[ReadableSpan]:
    """An agent trace made with the real SDK: nested spans, attributes, an exception."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "agent-svc", "deployment": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("agent", kind=SpanKind.SERVER, attributes={"mlflow.spanType": '"AGENT"'}) as root:
        root.set_attribute("mlflow.spanInputs", '{"question": "2+2?"}')
        with tracer.start_as_current_span(
            "llm", attributes={"openinference.span.kind": "llm", "llm.token_count": 12, "temperature": 0.5}
        ) as llm:
            llm.set_attribute("stop", ("\n", "END"))
            llm.add_event("first_token", {"index": 0, "ok": True})
        try:
            with tracer.start_as_current_span("tool", attributes={"tool.name": "calc"}):
                raise ValueError("division by zero")
        except ValueError:
            pass
        root.set_status(Status(StatusCode.OK))
    provider.shutdown()
    return exporter.get_finished_spans()


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (tuple, list)):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    return AnyValue(string_value=str(value))


def _kvs(attrs: Any) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in (attrs or {}).items()]


def otlp_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """Encode SDK spans as an OTLP exporter does (one resource, one scope)."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(_kvs(spans[0].resource.attributes))
    scope = resource_spans.scope_spans.add()
    for s in spans:
        assert s.context is not None
        out = scope.spans.add()
        out.trace_id = s.context.trace_id.to_bytes(16, "big")
        out.span_id = s.context.span_id.to_bytes(8, "big")
        if s.parent is not None:
            out.parent_span_id = s.parent.span_id.to_bytes(8, "big")
        out.name = s.name
        out.kind = s.kind.value + 1  # SDK INTERNAL=0 ... ; OTLP SPAN_KIND_INTERNAL=1 ...
        out.start_time_unix_nano = s.start_time or 0
        out.end_time_unix_nano = s.end_time or 0
        out.attributes.extend(_kvs(s.attributes))
        for e in s.events:
            event = out.events.add()
            event.name, event.time_unix_nano = e.name, e.timestamp
            event.attributes.extend(_kvs(e.attributes))
        out.status.code = {StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}[s.status.status_code]
        out.status.message = s.status.description or ""
    return request


async def test_sdk_spans_round_trip(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    converted = from_readable_spans(sdk_spans())
    by_name = {s.name: s for s in converted}
    root, llm, tool = by_name["agent"], by_name["llm"], by_name["tool"]
    assert root.parent_span_id is None and llm.parent_span_id == root.span_id == tool.parent_span_id
    assert len({s.trace_id for s in converted}) == 1 and root.trace_id.startswith("tr-")
    assert (root.span_type, llm.span_type, tool.span_type) == ("AGENT", "LLM", None)
    assert (root.kind, llm.kind) == ("SERVER", "INTERNAL")
    assert llm.attributes["stop"] == ["\n", "END"] and llm.attributes["llm.token_count"] == 12
    assert tool.status is SpanStatus.ERROR and "division by zero" in tool.status_message
    exception = next(e for e in tool.events if e.name == "exception")
    assert exception.attributes["exception.type"] == "ValueError"
    assert "Traceback" in exception.attributes["exception.stacktrace"]
    assert root.resource["service.name"] == "agent-svc"

    await store.spans.log_spans(exp, converted)
    trace = await store.traces.get(root.trace_id)
    assert list(trace.spans) == [root, llm, tool]  # parent first, siblings by start; all fields equal
    assert trace.info.state is TraceState.OK  # from the root span
    assert trace.info.timestamp_ms == root.start_time_unix_nano // 1_000_000


async def test_otlp_request_matches_sdk_conversion(store: AsyncStore) -> None:
    exp = await make_experiment(store)
    spans = sdk_spans()
    from_sdk = from_readable_spans(spans)
    body = otlp_request(spans).SerializeToString()
    from_otlp = from_otlp_request(body)
    assert from_otlp == from_sdk
    assert from_otlp_request(ExportTraceServiceRequest.FromString(body)) == from_sdk
    await store.spans.log_spans(exp, from_otlp)
    await store.spans.log_spans(exp, from_otlp)  # an exporter retry: nothing duplicated
    assert sorted(await store.spans.get_spans(from_sdk[0].trace_id), key=lambda s: s.span_id) == sorted(
        from_sdk, key=lambda s: s.span_id
    )


def test_otlp_bad_input() -> None:
    with pytest.raises(InvalidParameter, match="OTLP"):
        from_otlp_request(b"\xff\xff not protobuf")
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 8, b"\x02" * 8, "short"
    with pytest.raises(InvalidParameter, match="16 bytes"):
        from_otlp_request(request)


def test_otlp_rejected_spans_are_left_out_and_named() -> None:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for i in range(5):
        spans.add(trace_id=b"\x01" * 16, span_id=bytes([i + 1]) * 8, name=f"s{i}",
                  start_time_unix_nano=1_000, end_time_unix_nano=2_000)
    spans[1].kind = 7
    spans[2].end_time_unix_nano = 999
    spans[3].events.add(name="late", time_unix_nano=2**63)
    with pytest.raises(InvalidParameter, match="'s1'.*kind 7"):
        from_otlp_request(request)
    rejected: list[str] = []
    kept = from_otlp_request(request, rejected=rejected)
    assert [s.name for s in kept] == ["s0", "s4"]
    assert len(rejected) == 3
    assert "'s1'" in rejected[0] and "kind 7" in rejected[0]
    assert "'s2'" in rejected[1] and "before start" in rejected[1]
    assert "'s3'" in rejected[2] and "event timestamps" in rejected[2]


def test_span_type_detection() -> None:
    assert span_type_of({"mlflow.spanType": '"CHAT_MODEL"'}) == "CHAT_MODEL"
    assert span_type_of({"mlflow.spanType": "TOOL", "openinference.span.kind": "LLM"}) == "TOOL"
    assert span_type_of({"openinference.span.kind": "retriever"}) == "RETRIEVER"
    assert span_type_of({"other": 1}) is None
    assert trace_pb2.Span.SpanKind.Name(2) == "SPAN_KIND_SERVER"  # the prefix otel.py strips
