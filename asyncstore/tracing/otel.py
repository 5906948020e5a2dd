"""OpenTelemetry input: SDK spans and OTLP protobuf requests to :class:`Span` rows.

Needs the ``otel`` extra (``pip install 'asyncstore[otel]'``: opentelemetry-sdk and
opentelemetry-proto); the modules are imported when a converter is first called.

Example::

    from asyncstore.otel import from_otlp_request

    spans = from_otlp_request(request_body)  # bytes of an OTLP/HTTP POST /v1/traces
    await store.spans.log_spans(experiment_id, spans)

Ids become MLflow's: ``tr-`` + the 32-hex OTel trace id, 16-hex span ids. The span
type comes from the ``mlflow.spanType`` attribute (MLflow stores it JSON-encoded) or
OpenInference's ``openinference.span.kind``; attributes, events, status message,
kind and resource go into the span's content.

Attributes are taken as MLflow's OTLP ingestion stores them: a string attribute that
is itself the JSON of a string, object or array (what MLflow's tracing SDK sets, e.g.
``mlflow.spanInputs``) is decoded once, as MLflow's ``log_spans`` does
(``sanitize_attributes``); ``mlflow.spanType`` and ``mlflow.traceRequestId`` become the
span's ``span_type`` and ``trace_id`` and are not kept among the attributes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from asyncstore.entities import Span, SpanEvent, SpanStatus
from asyncstore.errors import InvalidParameter
from asyncstore.tracing import content
from asyncstore.tracing.content import RESERVED_KEYS
from asyncstore.tracing.rows import NS_MAX

if TYPE_CHECKING:  # pragma: no cover
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.trace import ReadableSpan

MLFLOW_SPAN_TYPE = "mlflow.spanType"
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
_OTLP_STATUS = {0: SpanStatus.UNSET, 1: SpanStatus.OK, 2: SpanStatus.ERROR}
_MISSING_EXTRA = (
    "OpenTelemetry support needs the 'otel' extra: pip install 'asyncstore[otel]' "
    "(opentelemetry-sdk and opentelemetry-proto)"
)


def _plain(value: Any) -> Any:
    """An OTel attribute value as JSON-ready Python (sequences become lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def _attributes(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k): _plain(v) for k, v in (attrs or {}).items()}


def _unwrapped(value: Any) -> Any:
    """A string holding the JSON of a string, object or array, decoded once (MLflow's
    ``sanitize_attributes`` on OTLP input); any other value as it is."""
    if isinstance(value, str) and value.lstrip()[:1] in ('"', "{", "["):
        try:
            decoded = content.loads(value)
        except ValueError:
            return value
        if isinstance(decoded, (str, dict, list)):
            return decoded
    return value


def _span_attributes(attrs: Mapping[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """An SDK span's attributes as MLflow stores them, and its span type."""
    return _typed({str(k): _unwrapped(_plain(v)) for k, v in (attrs or {}).items()})


def _otlp_span_attributes(attrs: Iterable[Any]) -> tuple[dict[str, Any], str | None]:
    """An OTLP span's attributes (``KeyValue`` messages) as MLflow stores them, and its
    span type: :func:`_span_attributes` in one pass over the messages (the hot path of
    ``asyncstore serve``)."""
    attributes: dict[str, Any] = {}
    for kv in attrs:
        value = kv.value
        if value.WhichOneof("value") == "string_value":
            attributes[kv.key] = _unwrapped(value.string_value)
        else:
            attributes[kv.key] = _any_value(value)
    return _typed(attributes)


def _typed(attributes: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The attributes without the keys a span's own fields hold, and the span type they name."""
    span_type = span_type_of(attributes)
    for key in RESERVED_KEYS:
        attributes.pop(key, None)
    return attributes, span_type


def span_type_of(attributes: Mapping[str, Any]) -> str | None:
    """The MLflow span type named by a span's attributes, if any.

    ``mlflow.spanType`` wins (MLflow writes it as a JSON string, ``'"LLM"'``); else
    OpenInference's ``openinference.span.kind`` (``LLM``, ``CHAIN``, ``TOOL``…).
    """
    value = attributes.get(MLFLOW_SPAN_TYPE)
    if isinstance(value, str) and value:
        if value.startswith('"'):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value
            return str(decoded)
        return value
    kind = attributes.get(OPENINFERENCE_SPAN_KIND)
    if isinstance(kind, str) and kind:
        return kind.upper()
    return None


def from_readable_span(span: ReadableSpan) -> Span:
    """Convert one OpenTelemetry SDK span (``opentelemetry.sdk.trace.ReadableSpan``).

    Raises:
        InvalidParameter: the span has no context or no start time.
    """
    ctx = span.context
    if ctx is None or span.start_time is None:
        raise InvalidParameter(f"OpenTelemetry span {span.name!r} has no context or start time")
    attributes, span_type = _span_attributes(span.attributes)
    status = span.status
    return Span(
        trace_id="tr-" + format(ctx.trace_id, "032x"),
        span_id=format(ctx.span_id, "016x"),
        name=span.name,
        start_time_unix_nano=span.start_time,
        end_time_unix_nano=span.end_time,
        parent_span_id=format(span.parent.span_id, "016x") if span.parent is not None else None,
        span_type=span_type,
        status=SpanStatus(status.status_code.name),
        status_message=status.description or "",
        kind=span.kind.name,
        attributes=attributes,
        events=tuple(SpanEvent(e.name, e.timestamp, _attributes(e.attributes)) for e in span.events),
        resource=_attributes(span.resource.attributes) if span.resource is not None else {},
    )


def from_readable_spans(spans: Iterable[ReadableSpan]) -> list[Span]:
    """Convert SDK spans, e.g. what a ``SpanExporter.export`` receives."""
    return [from_readable_span(s) for s in spans]


def _any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as plain Python."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)


def _kv(attributes: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in attributes}


def _otlp_problem(s: Any, kinds: Any) -> str | None:
    """What makes an OTLP span unstorable, or None: ids, kind and timestamps."""
    if len(s.trace_id) != 16 or len(s.span_id) != 8 or len(s.parent_span_id) not in (0, 8):
        return "trace_id must be 16 bytes, span ids 8 bytes"
    if s.kind not in kinds:
        return f"kind {s.kind} is not one of OTLP's span kinds (0-5)"
    end = s.end_time_unix_nano
    if s.start_time_unix_nano > NS_MAX or end > NS_MAX:
        return "timestamps must be at most 2**63-1 nanoseconds"
    if end and end < s.start_time_unix_nano:
        return "end_time_unix_nano is before start_time_unix_nano"
    if any(e.time_unix_nano > NS_MAX for e in s.events):
        return "event timestamps must be at most 2**63-1 nanoseconds"
    return None


def from_otlp_request(
    request: ExportTraceServiceRequest | bytes, *, rejected: list[str] | None = None
) -> list[Span]:
    """Convert an OTLP ``ExportTraceServiceRequest`` (or its serialised bytes).

    This is what an OTLP/HTTP receiver gets as the body of ``POST /v1/traces`` with
    ``Content-Type: application/x-protobuf``.

    Args:
        request: the request, parsed or as bytes.
        rejected: if given, a span that cannot be stored (ids of the wrong length, a
            kind outside OTLP's enum, a timestamp past 2**63-1 ns or an end before its
            start) is left out and a message naming it is appended here, instead of
            failing the whole request (OTLP's ``partial_success``).

    Raises:
        InvalidParameter: the bytes are not a valid request, or (without ``rejected``)
            a span cannot be stored.
    """
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )
        from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InvalidParameter(_MISSING_EXTRA) from exc
    if isinstance(request, (bytes, bytearray, memoryview)):
        parsed = ExportTraceServiceRequest()
        try:
            parsed.ParseFromString(bytes(request))
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            raise InvalidParameter(f"not a valid OTLP ExportTraceServiceRequest ({exc})") from exc
        request = parsed
    kinds = {number: name.removeprefix("SPAN_KIND_") for name, number in OtlpSpan.SpanKind.items()}
    out: list[Span] = []
    for resource_spans in request.resource_spans:
        resource = _kv(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                problem = _otlp_problem(s, kinds)
                if problem is not None:
                    message = f"OTLP span {s.name!r} (span_id {s.span_id.hex() or '-'}): {problem}"
                    if rejected is None:
                        raise InvalidParameter(message)
                    rejected.append(message)
                    continue
                attributes, span_type = _otlp_span_attributes(s.attributes)
                out.append(
                    Span(
                        trace_id="tr-" + s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        name=s.name,
                        start_time_unix_nano=s.start_time_unix_nano,
                        end_time_unix_nano=s.end_time_unix_nano or None,
                        parent_span_id=s.parent_span_id.hex() or None,
                        span_type=span_type,
                        status=_OTLP_STATUS.get(s.status.code, SpanStatus.UNSET),
                        status_message=s.status.message,
                        kind=kinds[s.kind],
                        attributes=attributes,
                        events=tuple(
                            SpanEvent(e.name, e.time_unix_nano, _kv(e.attributes)) for e in s.events
                        ),
                        resource=resource,
                    )
                )
    return out


__all__ = ["from_otlp_request", "from_readable_span", "from_readable_spans", "span_type_of"]
