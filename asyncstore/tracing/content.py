"""The ``spans.content`` JSON: MLflow 3.17's span document, written and read.

MLflow's ``SqlAlchemyStore.log_spans`` stores ``json.dumps(span.to_dict(),
ensure_ascii=False)`` (``mlflow/entities/span.py``)::

    {"trace_id": "<base64 of the 16-byte OTel trace id>", "span_id": "<base64 of 8 bytes>",
     "parent_span_id": "<base64>" or null, "name": "llm",
     "start_time_unix_nano": 1700000000000000000, "end_time_unix_nano": ... or null,
     "events": [{"name": "...", "time_unix_nano": ..., "attributes": {...}}],
     "status": {"code": "STATUS_CODE_OK", "message": ""},
     "attributes": {"mlflow.traceRequestId": "\\"tr-...\\"", "mlflow.spanType": "\\"LLM\\"",
                    "<key>": "<the value as JSON>", ...},
     "links": []}

:func:`encode` writes that document character for character as ``json.dumps`` does
(``", "`` and ``": "`` separators, non-ASCII unescaped), because MLflow's span
attribute search matches ``spans.content`` with LIKE patterns written for that text.
It runs once per span on the ingestion hot path, so it assembles the document from
orjson-encoded pieces instead of calling the json module (ten times slower).

What an :class:`~asyncstore.entities.Span` has and MLflow's document has not (an
OpenTelemetry ``kind`` other than INTERNAL, a ``resource``) goes under one extra key,
``"asyncstore"``, that MLflow ignores.

:func:`decode` reads MLflow's document (3.17's, and 3.5's hex ids and bare status
codes) and the document earlier asyncstore versions wrote (``span_type`` and a plain
``status`` at the top level).
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from asyncstore.entities import Span, SpanEvent, SpanStatus
from asyncstore.errors import InternalError

REQUEST_ID_KEY = "mlflow.traceRequestId"
"""MLflow's span attribute holding the trace id (``Span.trace_id`` in MLflow)."""
SPAN_TYPE_KEY = "mlflow.spanType"
"""MLflow's span attribute holding the span type."""
RESERVED_KEYS = frozenset((REQUEST_ID_KEY, SPAN_TYPE_KEY))
"""Attributes that are fields of a :class:`Span` (``trace_id``, ``span_type``), not attributes."""
EXTRA_KEY = "asyncstore"
DEFAULT_KIND = "INTERNAL"

STATUS_CODES = {
    SpanStatus.UNSET.value: "STATUS_CODE_UNSET",
    SpanStatus.OK.value: "STATUS_CODE_OK",
    SpanStatus.ERROR.value: "STATUS_CODE_ERROR",
}
"""asyncstore's status -> the OTel proto name MLflow writes in ``status.code``."""
_STATUS_FROM_CODE = {
    **{code: SpanStatus(status) for status, code in STATUS_CODES.items()},
    **{s.value: s for s in SpanStatus},  # MLflow 3.5 wrote the bare name
}

# orjson options: keys like json.dumps coerces them; subclasses of str/int/dict/list,
# dataclasses and datetimes are refused (and then handed to the json module), so
# what is accepted, and the value read back, is the json module's.
_ORJSON_OPTS = (
    orjson.OPT_NON_STR_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)
_ORJSON_INDENTED = _ORJSON_OPTS | orjson.OPT_INDENT_2
_INDENT = re.compile(rb"\n *").sub


def _json_default(value: Any) -> Any:
    """Types orjson serialises natively, made equal under the json module."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps's defaults (MLflow's), NaN refused (then written as null, as orjson does).
_json_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_json_default).encode
# For the rare string a UTF-8 encoder refuses (a lone surrogate): ASCII escapes.
_json_encode_ascii = json.JSONEncoder(ensure_ascii=True, allow_nan=False, default=_json_default).encode


def _finite(value: Any, depth: int = 0) -> Any:
    """A copy with NaN and infinities replaced by None (as orjson writes them)."""
    if depth > 200:
        raise ValueError("content is nested too deeply (or refers to itself)")
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, depth + 1) for v in value]
    return value


def _json_module(value: Any) -> str:
    """What orjson refuses (integers beyond 64 bits, lone surrogates, enums…), by the json module."""
    try:
        text = _json_encode(value)
    except ValueError:  # NaN/infinity (or a reference cycle, which _finite reports)
        text = _json_encode(_finite(value))
    try:
        text.encode()
    except UnicodeEncodeError:
        return _json_encode_ascii(_finite(value))
    return text


def dump(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``'s text (MLflow's attribute encoding), fast.

    Non-finite floats become null. Scalars go straight through orjson (same text);
    containers through orjson's indented output, whose newlines are all between
    tokens (a JSON string escapes its own), turned into json's separators.

    Raises:
        TypeError, ValueError: the value is not JSON-serialisable.
    """
    kind = type(value)
    if kind is str:
        try:
            return orjson.dumps(value).decode()
        except TypeError:  # a lone surrogate
            return _json_module(value)
    if kind is int or kind is bool or value is None:
        return _json_module(value) if kind is int and value.bit_length() > 63 else orjson.dumps(value).decode()
    if kind is float:
        return repr(value) if math.isfinite(value) else "null"
    try:
        indented = orjson.dumps(value, option=_ORJSON_INDENTED)
    except TypeError:  # orjson.JSONEncodeError
        return _json_module(value)
    return _INDENT(b"", indented.replace(b",\n", b", \n")).decode()


def _key(key: Any) -> str:
    """An attribute key as JSON text; non-string keys coerced as json.dumps coerces them."""
    if type(key) is str:
        return dump(key)
    coerced = json.loads(_json_encode({key: 0}))  # TypeError for keys json refuses
    return dump(next(iter(coerced)))


def b64_id(hex_id: str) -> str:
    """A hex trace or span id as MLflow's content holds it: base64 of its bytes."""
    return binascii.b2a_base64(bytes.fromhex(hex_id), newline=False).decode()


def encode(
    span: Span,
    status: str,
    trace_id_b64: str,
    request_id_attr: str,
    span_type_attr: str | None,
) -> str:
    """The ``content`` of one span, as MLflow's ``log_spans`` writes it.

    Args:
        span: a validated span.
        status: its status as a plain string (UNSET, OK, ERROR).
        trace_id_b64: :func:`b64_id` of the trace id's hex part (shared by a trace's spans).
        request_id_attr, span_type_attr: the encoded ``"mlflow.traceRequestId": ...`` and
            ``"mlflow.spanType": ...`` members (:func:`member`), None when untyped.

    Raises:
        TypeError, ValueError: an attribute, event or resource is not JSON-serialisable.
    """
    parent = span.parent_span_id
    end = span.end_time_unix_nano
    members = [request_id_attr]
    if span_type_attr is not None:
        members.append(span_type_attr)
    for key, value in span.attributes.items():
        if key not in RESERVED_KEYS:
            members.append(f"{_key(key)}: {dump(dump(value))}")
    events = ", ".join(
        f'{{"name": {dump(e.name)}, "time_unix_nano": {e.timestamp_unix_nano}, "attributes": {dump(e.attributes)}}}'
        for e in span.events
    )
    extra = ""
    if span.kind != DEFAULT_KIND or span.resource:
        extra = f', "{EXTRA_KEY}": {dump({"kind": span.kind, "resource": span.resource})}'
    return (
        f'{{"trace_id": "{trace_id_b64}", "span_id": "{b64_id(span.span_id)}", '
        f'"parent_span_id": {"null" if parent is None else chr(34) + b64_id(parent) + chr(34)}, '
        f'"name": {dump(span.name)}, "start_time_unix_nano": {span.start_time_unix_nano}, '
        f'"end_time_unix_nano": {"null" if end is None else end}, "events": [{events}], '
        f'"status": {{"code": "{STATUS_CODES[status]}", "message": {dump(span.status_message)}}}, '
        f'"attributes": {{{", ".join(members)}}}, "links": []{extra}}}'
    )


def member(key: str, value: str) -> str:
    """One ``"key": "<value as JSON>"`` member of the attributes object (string values)."""
    return f"{dump(key)}: {dump(dump(value))}"


# --- reading --------------------------------------------------------------------------------------


_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
"""A ``bytes.translate`` table: every ASCII digit becomes ``0``, every other byte a blank."""
_LONG_RUN = b"0" * 19


def _may_hold_long_int(text: str | bytes) -> bool:
    """Whether the text has a run of 19 digits, so may hold an integer outside 64 bits,
    which orjson would silently turn into a float (json keeps it an int, as MLflow
    reads it). A translate and a substring search: a tenth of a regex search's time."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return _LONG_RUN in raw.translate(_DIGITS_AS_ZERO)


def loads(text: str | bytes) -> Any:
    """JSON text decoded as ``json.loads`` decodes it, fast: orjson, else the json module
    (NaN, which MLflow's json.dumps writes; integers outside 64 bits).

    Raises:
        ValueError: not JSON.
    """
    if not _may_hold_long_int(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def attribute(value: Any) -> Any:
    """A stored attribute value decoded as MLflow's span does: JSON, else the raw value."""
    if type(value) is not str:
        return value
    try:
        return loads(value)
    except ValueError:  # a string set on the OTel span directly
        return value


def _hex_span_id(value: str) -> str:
    """A span id from MLflow's content: base64 of 8 bytes (3.17), or 16 hex characters (3.5)."""
    if len(value) == 16:
        bytes.fromhex(value)  # ValueError unless hex
        return value.lower()
    raw = base64.b64decode(value, validate=True)
    if len(raw) != 8:
        raise ValueError(f"span id {value!r} is not 8 bytes")
    return raw.hex()


def _from_mlflow(data: Mapping[str, Any], trace_id: str) -> Span:
    raw_attributes = data.get("attributes") or {}
    span_type = attribute(raw_attributes.get(SPAN_TYPE_KEY))
    status = data["status"]
    parent = data.get("parent_span_id")
    end = data.get("end_time_unix_nano")
    extra = data.get(EXTRA_KEY) or {}
    return Span(
        trace_id=trace_id,
        span_id=_hex_span_id(data["span_id"]),
        name=data["name"],
        start_time_unix_nano=int(data["start_time_unix_nano"]),
        end_time_unix_nano=int(end) if end else None,
        parent_span_id=_hex_span_id(parent) if parent else None,
        span_type=None if span_type is None else str(span_type),
        status=_STATUS_FROM_CODE[status["code"]],
        status_message=status.get("message") or "",
        kind=extra.get("kind", DEFAULT_KIND),
        attributes={k: attribute(v) for k, v in raw_attributes.items() if k not in RESERVED_KEYS},
        events=tuple(
            SpanEvent(e["name"], int(e["time_unix_nano"]), dict(e.get("attributes") or {}))
            for e in data.get("events") or ()
        ),
        resource=dict(extra.get("resource") or {}),
    )


def _from_asyncstore_v1(data: Mapping[str, Any]) -> Span:
    """The document asyncstore wrote before it wrote MLflow's (its own field names)."""
    return Span(
        trace_id=data["trace_id"],
        span_id=data["span_id"],
        name=data["name"],
        start_time_unix_nano=data["start_time_unix_nano"],
        end_time_unix_nano=data["end_time_unix_nano"],
        parent_span_id=data["parent_span_id"],
        span_type=data["span_type"],
        status=SpanStatus(data["status"]),
        status_message=data["status_message"],
        kind=data["kind"],
        attributes=data["attributes"],
        events=tuple(SpanEvent(e["name"], e["timestamp_unix_nano"], e["attributes"]) for e in data["events"]),
        resource=data["resource"],
    )


def decode(content: str | bytes, trace_id: str, span_id: str) -> Span:
    """Rebuild a :class:`Span` from the ``content`` of the ``spans`` row (trace_id, span_id).

    Raises:
        InternalError: the content is neither MLflow's span document nor asyncstore's
            earlier one; the message names the row.
    """
    try:
        data = loads(content)
        if isinstance(data.get("status"), dict):
            return _from_mlflow(data, trace_id)
        return _from_asyncstore_v1(data)
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise InternalError(
            f"spans row (trace_id={trace_id!r}, span_id={span_id!r}) has a content that is neither "
            f"MLflow's span JSON nor asyncstore's: {type(exc).__name__}: {exc}"
        ) from exc
