"""Reading and decoding the body of an OTLP/HTTP ``POST /v1/traces``.

Everything here raises :class:`BodyError` with the HTTP status to answer (400, 413,
415) and a message for the client; nothing is written before a body is decoded whole.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class BodyError(Exception):
    """A request body refused before anything is written: ``status`` and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def encoding_of(content_type: str | None) -> str:
    """``PROTOBUF`` or ``JSON`` for a ``Content-Type`` header (parameters ignored).

    Raises:
        BodyError: 415 for any other (or no) content type.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in (PROTOBUF, JSON):
        return media
    raise BodyError(415, f"unsupported Content-Type {content_type!r}: use {PROTOBUF} or {JSON}")


async def read_limited(chunks: AsyncIterator[bytes], content_length: str | None, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it (or its Content-Length) exceeds ``limit`` bytes."""
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise BodyError(400, f"invalid Content-Length {content_length!r}") from None
        if declared > limit:
            raise BodyError(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise BodyError(413, f"body exceeds the limit of {limit} bytes")
    return bytes(body)


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body without its ``Content-Encoding`` (identity or gzip), at most ``limit`` bytes.

    Gzip is inflated in bounded steps, so a small body that inflates past the limit (a
    zip bomb) is refused with 413 without being inflated whole; bad gzip is 400, another
    encoding 415.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding != "gzip":
        raise BodyError(415, f"unsupported Content-Encoding {content_encoding!r}: use gzip or none")
    out = bytearray()
    rest = body
    try:
        while rest:  # one gzip member after another
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = rest
            while data:
                out += inflater.decompress(data, limit + 1 - len(out))
                if len(out) > limit:
                    raise BodyError(413, f"decompressed body exceeds the limit of {limit} bytes")
                data = inflater.unconsumed_tail
            if not inflater.eof:
                raise BodyError(400, "invalid gzip body: truncated")
            rest = inflater.unused_data
    except zlib.error as exc:
        raise BodyError(400, f"invalid gzip body ({exc})") from None
    return bytes(out)


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(obj: dict[str, Any], where: str) -> None:
    """OTLP JSON carries ids as hex strings; protobuf's JSON mapping wants base64."""
    for field in _ID_FIELDS:
        value = obj.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BodyError(400, f"{where}.{field} must be a hex string, got {type(value).__name__}")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise BodyError(400, f"{where}.{field} {value[:64]!r} is not a hex string") from None
        obj[field] = base64.b64encode(raw).decode()


def _list(obj: dict[str, Any], *names: str) -> list[Any]:
    for name in names:
        value = obj.get(name)
        if value is not None:
            if not isinstance(value, list):
                raise BodyError(400, f"{name} must be an array")
            return value
    return []


def _dicts(items: list[Any], what: str) -> list[dict[str, Any]]:
    if not all(isinstance(item, dict) for item in items):
        raise BodyError(400, f"every item of {what} must be an object")
    return items


def parse(body: bytes, encoding: str) -> ExportTraceServiceRequest:
    """An ``ExportTraceServiceRequest`` from protobuf bytes or OTLP JSON.

    OTLP JSON (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding): trace
    and span ids are hex strings (not base64), 64-bit integers may be strings, enums
    names or numbers, and unknown fields are ignored.

    Raises:
        BodyError: 400 for a body that does not parse.
    """
    request = ExportTraceServiceRequest()
    if encoding == PROTOBUF:
        try:
            request.ParseFromString(body)
        except Exception as exc:  # protobuf's DecodeError has no stable import path
            raise BodyError(400, f"not a valid OTLP ExportTraceServiceRequest ({exc})") from None
        return request
    from google.protobuf import json_format  # type: ignore[import-untyped,unused-ignore]

    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise BodyError(400, f"invalid JSON body ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(document, dict):
        raise BodyError(400, "the JSON body must be an object (an ExportTraceServiceRequest)")
    for i, rs in enumerate(_dicts(_list(document, "resourceSpans", "resource_spans"), "resourceSpans")):
        for j, ss in enumerate(_dicts(_list(rs, "scopeSpans", "scope_spans"), "scopeSpans")):
            for k, span in enumerate(_dicts(_list(ss, "spans"), "spans")):
                where = f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                _hex_ids_to_base64(span, where)
                for n, link in enumerate(_dicts(_list(span, "links"), f"{where}.links")):
                    _hex_ids_to_base64(link, f"{where}.links[{n}]")
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError, binascii.Error) as exc:
        raise BodyError(400, f"not a valid OTLP JSON ExportTraceServiceRequest ({exc})") from None
    return request
