"""The OTLP/HTTP receiver as a Starlette app: ``POST /v1/traces``, ``/health``, ``/ready``, ``/metrics``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped,unused-ignore]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asyncstore import migrate
from asyncstore.dialect import chunks
from asyncstore.entities import Span
from asyncstore.errors import InvalidParameter, StoreError
from asyncstore.otel import from_otlp_request
from asyncstore.server.body import JSON, BodyError, decompress, encoding_of, parse, read_limited
from asyncstore.server.batcher import BatchObserver, GroupCommitter, QueueFull, ShuttingDown
from asyncstore.store import AsyncStore
from asyncstore.tracing.links import MAX_LINKS

log = logging.getLogger(__name__)

EXPERIMENT_HEADER = "x-mlflow-experiment-id"
RUN_HEADER = "x-mlflow-run-id"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_BATCH_SPANS = 5000
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_QUEUE_LIMIT = 1000
DEFAULT_GRACE_SECONDS = 30.0
DEFAULT_WRITERS = 2
RETRY_AFTER_SECONDS = "1"

# google.rpc.Code values for the OTLP Status body of each HTTP status.
_GRPC_CODE = {400: 3, 404: 5, 409: 6, 413: 8, 415: 3, 429: 8, 503: 14}


def _status_body(encoding: str, code: int, message: str) -> bytes:
    """An OTLP error body: a ``google.rpc.Status`` with ``code`` and ``message``, in ``encoding``."""
    if encoding == JSON:
        import json

        return json.dumps({"code": code, "message": message}).encode()
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text  # fields 1 (code) and 2 (message)


_REJECTIONS_SHOWN = 5
"""Rejected spans whose reason a response spells out (the rest are counted)."""


def _rejection(rejected: list[str], total: int) -> str:
    """One message for the spans left out of a request: how many, and why (the first few)."""
    shown = "; ".join(rejected[:_REJECTIONS_SHOWN])
    more = f"; and {len(rejected) - _REJECTIONS_SHOWN} more" if len(rejected) > _REJECTIONS_SHOWN else ""
    return f"{len(rejected)} of {total} spans rejected: {shown}{more}"


def _success_body(encoding: str, rejected: int, message: str) -> bytes:
    """An ``ExportTraceServiceResponse``: empty, or with ``partial_success`` when spans were rejected."""
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if encoding == JSON:
        text: str = json_format.MessageToJson(response, indent=None)
        return text.encode()
    body: bytes = response.SerializeToString()
    return body


async def _link_roots(store: AsyncStore, spans: list[Span], run_id: str) -> None:
    """Link the traces whose root span is among ``spans`` to ``run_id``, as MLflow's
    server does for ``x-mlflow-run-id`` (linking twice is a no-op, so a retry may)."""
    roots = sorted({span.trace_id for span in spans if span.parent_span_id is None})
    for chunk in chunks(roots, MAX_LINKS):
        await store.traces.link_to_run(chunk, run_id)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass
class _Metrics:
    """The app's Prometheus metrics, in a registry of its own."""

    registry: CollectorRegistry
    spans_received: Counter
    spans_stored: Counter
    spans_rejected: Counter
    requests: Counter
    batch_spans: Histogram
    write_seconds: Histogram
    queue_depth: Gauge

    @classmethod
    def create(cls) -> _Metrics:
        r = CollectorRegistry()
        return cls(
            registry=r,
            spans_received=Counter("asyncstore_otlp_spans_received", "Spans received in OTLP requests", registry=r),
            spans_stored=Counter("asyncstore_otlp_spans_stored", "Spans committed to the database", registry=r),
            spans_rejected=Counter("asyncstore_otlp_spans_rejected", "Spans of refused requests", registry=r),
            requests=Counter("asyncstore_otlp_requests", "POST /v1/traces requests by HTTP status", ["code"], registry=r),
            batch_spans=Histogram(
                "asyncstore_otlp_batch_spans", "Spans per log_spans call (one transaction each)", registry=r,
                buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
            ),
            write_seconds=Histogram("asyncstore_otlp_write_seconds", "Duration of each log_spans call", registry=r),
            queue_depth=Gauge("asyncstore_otlp_queue_depth", "Requests waiting for the writer", registry=r),
        )


def create_app(
    store_or_uri: AsyncStore | str,
    *,
    default_experiment_id: str | int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch_spans: int = DEFAULT_MAX_BATCH_SPANS,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    queue_limit: int = DEFAULT_QUEUE_LIMIT,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    writers: int = DEFAULT_WRITERS,
    upgrade: bool = False,
) -> Starlette:
    """An ASGI app receiving OTLP/HTTP traces into an asyncstore database.

    Args:
        store_or_uri: an open :class:`AsyncStore` (used, never closed), or a URI: one
            store is opened in the app's lifespan (migrated first with ``upgrade``) and
            closed at shutdown.
        default_experiment_id: the experiment of requests without the
            ``x-mlflow-experiment-id`` header (without either, a request is refused: 400).
            A request's ``x-mlflow-run-id`` header links the traces whose root span it
            carries to that run, as MLflow's server does.
        max_body_bytes: the largest body accepted, before and after gzip (else 413).
        max_batch_spans: the most spans coalesced into one ``log_spans`` call (a larger
            request is written alone, in one call).
        max_wait_ms: how long the writer waits for more requests to join a batch.
        queue_limit: requests waiting for the writer before new ones get 429.
        grace_seconds: at shutdown, how long the queue may take to drain.
        writers: batches written concurrently, each in its own transaction.

    The app answers a request only once its spans are committed (or refused).
    """
    for name, value in (("max_body_bytes", max_body_bytes), ("max_batch_spans", max_batch_spans),
                        ("queue_limit", queue_limit), ("writers", writers)):
        if value < 1:
            raise InvalidParameter(f"{name} must be at least 1, got {value}")
    default_exp = None if default_experiment_id is None else str(default_experiment_id)
    metrics = _Metrics.create()
    state: dict[str, Any] = {}

    def store() -> AsyncStore:
        opened: AsyncStore = state["store"]
        return opened

    def committer() -> GroupCommitter:
        running: GroupCommitter = state["committer"]
        return running

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = not isinstance(store_or_uri, AsyncStore)
        if isinstance(store_or_uri, AsyncStore):
            opened = store_or_uri
        else:
            opened = await AsyncStore.open(store_or_uri, upgrade=upgrade)
        observer = BatchObserver(on_batch=_on_batch, on_queue=metrics.queue_depth.set)
        writer = GroupCommitter(
            opened.spans.log_spans, max_batch_spans=max_batch_spans, max_wait_ms=max_wait_ms,
            queue_limit=queue_limit, writers=writers, observer=observer,
        )
        state.update(store=opened, committer=writer)
        writer.start()
        try:
            yield
        finally:
            await writer.close(grace_seconds)
            if owned:
                await opened.close()

    def _on_batch(spans: int, seconds: float) -> None:
        metrics.batch_spans.observe(spans)
        metrics.write_seconds.observe(seconds)

    def answer(encoding: str, status: int, message: str, *, retry: bool = False, spans: int = 0) -> Response:
        metrics.requests.labels(code=str(status)).inc()
        metrics.spans_rejected.inc(spans)
        headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry else None
        body = _status_body(encoding, _GRPC_CODE.get(status, 13), message)
        return Response(body, status_code=status, media_type=encoding, headers=headers)

    async def traces(request: Request) -> Response:
        try:
            encoding = encoding_of(request.headers.get("content-type"))
        except BodyError as exc:
            return answer(JSON, exc.status, exc.message)
        rejected: list[str] = []
        try:
            raw = await read_limited(request.stream(), request.headers.get("content-length"), max_body_bytes)
            body = decompress(raw, request.headers.get("content-encoding"), max_body_bytes)
            spans = from_otlp_request(parse(body, encoding), rejected=rejected)
        except BodyError as exc:
            return answer(encoding, exc.status, exc.message)
        except StoreError as exc:
            return answer(encoding, 400, exc.message)
        total = len(spans) + len(rejected)
        metrics.spans_received.inc(total)
        if rejected and not spans:  # nothing to store: the request is refused whole
            return answer(encoding, 400, _rejection(rejected, total), spans=total)
        experiment_id = request.headers.get(EXPERIMENT_HEADER) or default_exp
        if experiment_id is None:
            return answer(
                encoding, 400, f"no experiment: send the {EXPERIMENT_HEADER} header "
                "(or start the receiver with a default experiment id)", spans=total,
            )
        run_id = request.headers.get(RUN_HEADER)
        if spans:
            try:
                if run_id:
                    await store().runs.get(run_id)  # an unknown run: 404 before anything is written
                await committer().submit(experiment_id, spans)
                if run_id:
                    await _link_roots(store(), spans, run_id)
            except QueueFull as exc:
                return answer(encoding, 429, str(exc), retry=True, spans=total)
            except ShuttingDown as exc:
                return answer(encoding, 503, str(exc), retry=True, spans=total)
            except StoreError as exc:
                # A 500's message may carry a driver's text: the client gets a generic one.
                message = exc.message if exc.http_status != 500 else "internal error while writing spans"
                retry = exc.http_status == 503  # TemporarilyUnavailable, SchemaOutOfDate
                return answer(encoding, exc.http_status, message, retry=retry, spans=total)
            metrics.spans_stored.inc(len(spans))
        metrics.requests.labels(code="200").inc()
        metrics.spans_rejected.inc(len(rejected))
        message = _rejection(rejected, total) if rejected else ""
        return Response(_success_body(encoding, len(rejected), message), status_code=200, media_type=encoding)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def ready(request: Request) -> Response:
        try:
            found = await migrate.inspect_database(store().engine)
        except StoreError as exc:
            return PlainTextResponse(f"not ready: {exc.message}\n", status_code=503)
        except Exception as exc:
            log.warning("readiness check failed: %s", type(exc).__name__)
            return PlainTextResponse(f"not ready: the database does not answer ({type(exc).__name__})\n", 503)
        if not found.served:
            return PlainTextResponse(
                f"not ready: the schema is at revision {found.revision}, this asyncstore needs "
                f"{migrate.head_revision()}: run `asyncstore db upgrade`\n", status_code=503,
            )
        return PlainTextResponse("ready\n")

    async def metrics_endpoint(request: Request) -> Response:
        metrics.queue_depth.set(committer().depth if "committer" in state else 0)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/v1/traces", traces, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
