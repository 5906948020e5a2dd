"""``asyncstore serve``: the OTLP/HTTP receiver, served for real by uvicorn in a process of its own.

The OpenTelemetry SDK exports to it with ``OTLPSpanExporter`` (protobuf); OTLP JSON
is posted with httpx (the Python exporter has no JSON encoding). Hostile bodies get
their documented status and write nothing; concurrent requests are coalesced into
far fewer ``log_spans`` transactions than requests (counted by ``/metrics``).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode
from sqlalchemy import text

from asyncstore import AsyncStore
from asyncstore.otel import from_readable_spans
from asyncstore.schema import spans as spans_table
from asyncstore.schema import trace_info
from tests.helpers import closed_port, count_rows, make_experiment
from tests.test_mlflow_databases import _mlflow_store, mlflow_uri  # noqa: F401  (fixture)

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}


class Served:
    """A running ``asyncstore serve`` process: its URL, and its log."""

    def __init__(self, uri: str, tmp_path: Path, *options: str) -> None:
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "asyncstore.cli", "serve", "--uri", uri, "--port", str(self.port),
                 "--log-level", "warning", *options],
                stdout=out, stderr=subprocess.STDOUT,
            )
        for _ in range(300):
            if self.process.poll() is not None:
                pytest.fail(f"asyncstore serve exited with {self.process.returncode}: {self.log.read_text()}")
            try:
                httpx.get(self.url + "/health", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        pytest.fail(f"asyncstore serve did not answer within 30 s: {self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM, wait for the exit; the exit code. The log must show no traceback.

        uvicorn re-raises the signal it caught once it has shut down (the lifespan's
        drain included), so a clean stop ends by SIGTERM.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        assert "Traceback" not in self.log.read_text(), self.log.read_text()
        return code

    def metric(self, name: str) -> float:
        """The value of one sample in ``/metrics`` (0 when absent)."""
        for line in httpx.get(self.url + "/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0


@pytest.fixture
def serve(migrated_uri: str, tmp_path: Path) -> Iterator[Any]:
    """Start ``asyncstore serve`` on the test's database with extra options; stopped at the end."""
    started: list[Served] = []

    def start(*options: str) -> Served:
        started.append(Served(migrated_uri, tmp_path, *options))
        return started[-1]

    yield start
    for server in started:
        assert server.stop() in (0, -signal.SIGTERM)


def _sdk_spans(provider_exporter: Any, experiment: int) -> tuple[list[ReadableSpan], str]:
    """Nested spans (root, child, grandchild) with attributes, events and an error, made by the SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "serve-test"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    if provider_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(provider_exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("root", attributes={"user": "ann", "n": 3, "ratio": 0.5}) as root:
        with tracer.start_as_current_span("child", attributes={"tags": ["a", "b"]}) as child:
            child.add_event("thinking", {"step": 1})
            with tracer.start_as_current_span("grandchild") as grand:
                grand.set_status(Status(StatusCode.ERROR, "boom"))
                grand.add_event("exception", {"exception.message": "boom"})
        root.set_status(Status(StatusCode.OK))
    provider.shutdown()
    trace_id = "tr-" + format(root.get_span_context().trace_id, "032x")
    return list(memory.get_finished_spans()), trace_id


def _otlp_json(spans: list[ReadableSpan]) -> bytes:
    """The OTLP JSON of SDK spans: protobuf's JSON mapping with hex ids, as OTLP requires."""
    document = json_format.MessageToDict(encode_spans(spans))
    for rs in document["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    import json

    return json.dumps(document).encode()


def _by_id(spans: Any) -> dict[str, Any]:
    return {s.span_id: s for s in spans}


async def test_sdk_exports_protobuf_and_json_and_reads_back_equal(serve: Any, store: AsyncStore) -> None:
    server = serve()
    exp = await make_experiment(store)
    exporter = OTLPSpanExporter(endpoint=server.url + "/v1/traces", headers={"x-mlflow-experiment-id": str(exp)})
    made, trace_id = _sdk_spans(exporter, exp)
    stored = await store.traces.get(trace_id)
    assert _by_id(stored.spans) == _by_id(from_readable_spans(made))
    by_name = {s.name: s for s in stored.spans}
    assert by_name["grandchild"].parent_span_id == by_name["child"].span_id
    assert by_name["grandchild"].status.value == "ERROR" and by_name["grandchild"].status_message == "boom"
    assert by_name["child"].events[0].name == "thinking" and by_name["root"].attributes["user"] == "ann"

    # OTLP JSON, plain and gzipped: the same spans, read back equal.
    for gzipped in (False, True):
        made, trace_id = _sdk_spans(None, exp)
        body = _otlp_json(made)
        headers = {**JS, "x-mlflow-experiment-id": str(exp)}
        if gzipped:
            body, headers = gzip.compress(body), {**headers, "Content-Encoding": "gzip"}
        response = httpx.post(server.url + "/v1/traces", content=body, headers=headers)
        assert response.status_code == 200 and response.json() == {}, response.text
        assert _by_id((await store.traces.get(trace_id)).spans) == _by_id(from_readable_spans(made))


def _request(count: int = 1, trace_id: bytes | None = None, span_id_len: int = 8, trace_id_len: int = 16) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``count`` sibling root spans of one trace."""
    rng = random.Random()
    tid = trace_id or rng.randbytes(trace_id_len)
    spans = [
        OtlpSpan(trace_id=tid, span_id=rng.randbytes(span_id_len), name=f"s{i}",
                 start_time_unix_nano=1_700_000_000_000_000_000 + i, end_time_unix_nano=1_700_000_000_100_000_000)
        for i in range(count)
    ]
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()


async def _rows(store: AsyncStore) -> tuple[int, int]:
    return await count_rows(store, spans_table), await count_rows(store, trace_info)


async def test_hostile_input_gets_its_status_and_writes_nothing(serve: Any, store: AsyncStore) -> None:
    server = serve("--max-body-mb", "4")
    exp, other = await make_experiment(store), await make_experiment(store)
    url = server.url + "/v1/traces"
    with_exp = {"x-mlflow-experiment-id": str(exp)}

    def post(body: Any, status: int, headers: dict[str, str], says: str = "") -> httpx.Response:
        response = httpx.post(url, content=body, headers=headers, timeout=60)
        assert response.status_code == status, (response.status_code, response.text)
        assert "Traceback" not in response.text
        if status != 200:
            if response.headers["content-type"].startswith("application/json"):
                assert response.json()["message"] and says in response.json()["message"], response.text
            else:
                assert says.encode() in response.content  # a protobuf google.rpc.Status
        return response

    good = _request(3)
    post(good[:-5], 400, {**PB, **with_exp}, "not a valid OTLP")  # truncated
    post(bytes([0xFF]) * 1000, 400, {**PB, **with_exp})  # random bytes
    post(b'{"resourceSpans": [', 400, {**JS, **with_exp}, "invalid JSON")
    post(b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": 7}]}]}]}', 400, {**JS, **with_exp}, "traceId")
    post(good, 415, {"Content-Type": "text/plain", **with_exp}, "Content-Type")
    post(good, 415, with_exp, "Content-Type")
    post(b"not gzip at all", 400, {**PB, **with_exp, "Content-Encoding": "gzip"}, "gzip")
    post(gzip.compress(good)[:-10], 400, {**PB, **with_exp, "Content-Encoding": "gzip"}, "gzip")
    bomb = gzip.compress(bytes(64 * 1024 * 1024))  # 64 MiB of zeros in about 64 KiB
    assert len(bomb) < 1024 * 1024
    post(bomb, 413, {**PB, **with_exp, "Content-Encoding": "gzip"}, "decompressed")
    post(bytes(5 * 1024 * 1024), 413, {**PB, **with_exp}, "limit")
    post((bytes(1024 * 1024) for _ in range(5)), 413, {**PB, **with_exp}, "limit")  # chunked, no Content-Length
    post(_request(2, trace_id_len=8), 400, {**PB, **with_exp}, "16 bytes")
    post(_request(2, span_id_len=4), 400, {**PB, **with_exp}, "8 bytes")
    short = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "abcd", "spanId": "0102030405060708"}]}]}]}'
    post(short, 400, {**JS, **with_exp}, "16 bytes")
    post(short.replace(b"abcd", b"zz" * 16), 400, {**JS, **with_exp}, "hex")
    odd_kind = ExportTraceServiceRequest.FromString(good)
    for span in odd_kind.resource_spans[0].scope_spans[0].spans:
        span.kind = 99
    post(odd_kind.SerializeToString(), 400, {**PB, **with_exp}, "3 of 3 spans rejected")  # every span invalid
    post(b"[" * 100_000 + b"]" * 100_000, 400, {**JS, **with_exp}, "invalid JSON")  # nested too deep
    post(b'{"resourceSpans": {}}', 400, {**JS, **with_exp}, "array")
    post(good, 400, PB, "x-mlflow-experiment-id")  # no experiment, no default
    post(good, 404, {**PB, "x-mlflow-experiment-id": "987654"}, "987654")
    post(good, 404, {**PB, **with_exp, "x-mlflow-run-id": "f" * 32}, "f" * 32)  # no such run
    as_json = short.replace(b'"abcd"', b'"' + b"ab" * 16 + b'", "name": "j", "startTimeUnixNano": "1700000000000000000"')
    post(as_json, 404, {**JS, "x-mlflow-experiment-id": "987654"}, "987654")
    assert await _rows(store) == (0, 0)

    # A trace of one experiment, sent again naming another: refused, nothing changed.
    tid = random.randbytes(16)
    post(_request(2, trace_id=tid), 200, {**PB, **with_exp})
    assert await _rows(store) == (2, 1)
    post(_request(2, trace_id=tid), 400, {**PB, "x-mlflow-experiment-id": str(other)}, "experiment")
    assert await _rows(store) == (2, 1)

    # 10,000 spans in one request: all written, in one transaction.
    big = _request(10_000)
    assert len(big) < 4 * 1024 * 1024
    post(big, 200, {**PB, **with_exp})
    assert await _rows(store) == (10_002, 2)
    assert server.metric("asyncstore_otlp_spans_stored_total") == 10_002


def _mixed_request() -> tuple[bytes, list[bytes]]:
    """A request of 7 spans of which 4 cannot be stored (one reason each), and the good ones' span ids."""
    request = ExportTraceServiceRequest.FromString(_request(7))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].span_id = b"\x01\x02\x03"  # wrong length
    spans[2].kind = 42  # outside OTLP's enum
    spans[4].end_time_unix_nano = spans[4].start_time_unix_nano - 1  # ends before it starts
    spans[6].start_time_unix_nano = 2**64 - 1  # past BIGINT
    spans[6].end_time_unix_nano = 0
    return request.SerializeToString(), [spans[i].span_id for i in (1, 3, 5)]


async def test_invalid_spans_are_rejected_through_partial_success(serve: Any, store: AsyncStore) -> None:
    server = serve()
    exp = await make_experiment(store)
    headers = {"x-mlflow-experiment-id": str(exp)}
    body, kept = _mixed_request()
    response = httpx.post(server.url + "/v1/traces", content=body, headers={**PB, **headers})
    assert response.status_code == 200, response.text
    answer = ExportTraceServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_spans == 4
    message = answer.partial_success.error_message
    assert message.startswith("4 of 7 spans rejected: ")
    for reason in ("8 bytes", "kind 42", "before start_time", "2**63-1"):
        assert reason in message, message
    trace_id = "tr-" + ExportTraceServiceRequest.FromString(body).resource_spans[0].scope_spans[0].spans[1].trace_id.hex()
    assert sorted(s.span_id for s in (await store.traces.get(trace_id)).spans) == sorted(k.hex() for k in kept)

    # The same in OTLP JSON: the response is JSON, rejectedSpans a string (int64).
    body, kept = _mixed_request()
    document = json_format.MessageToDict(ExportTraceServiceRequest.FromString(body))
    for span in document["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId"):
            span[key] = base64.b64decode(span[key]).hex()
    response = httpx.post(server.url + "/v1/traces", json=document, headers={**JS, **headers})
    assert response.status_code == 200, response.text
    assert response.json()["partialSuccess"]["rejectedSpans"] == "4"
    assert "4 of 7 spans rejected" in response.json()["partialSuccess"]["errorMessage"]
    assert await _rows(store) == (6, 2)
    assert server.metric("asyncstore_otlp_spans_rejected_total") == 8
    assert server.metric("asyncstore_otlp_spans_stored_total") == 6


async def test_group_commit_coalesces_concurrent_requests(serve: Any, store: AsyncStore) -> None:
    # A batch waits up to 50 ms for more requests: one test client cannot outpace the
    # writer otherwise, and the count of transactions would only measure its speed.
    server = serve("--max-wait-ms", "50")
    exp, other = await make_experiment(store), await make_experiment(store)
    foreign = random.randbytes(16)  # a trace of the other experiment, sent to `exp` by a few requests
    response = httpx.post(server.url + "/v1/traces", content=_request(1, trace_id=foreign),
                          headers={**PB, "x-mlflow-experiment-id": str(other)})
    assert response.status_code == 200

    async def load(clients: int, per_client: int, bad_every: int) -> list[tuple[bool, int]]:
        """``clients`` concurrent clients posting one-span requests; every ``bad_every``-th names ``foreign``."""
        answers: list[tuple[bool, int]] = []

        async def client(http: httpx.AsyncClient, c: int) -> None:
            for i in range(per_client):
                bad = (c * per_client + i) % bad_every == bad_every - 1
                body = _request(1, trace_id=foreign) if bad else _request(1)
                r = await http.post("/v1/traces", content=body, headers={**PB, "x-mlflow-experiment-id": str(exp)})
                answers.append((bad, r.status_code))

        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=1.0)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=120) as http:
            await asyncio.gather(*(client(http, c) for c in range(clients)))
        assert len(answers) == clients * per_client
        return answers

    # 50 clients x 20 requests: all stored, in far fewer transactions than requests.
    calls_before = server.metric("asyncstore_otlp_batch_spans_count")
    answers = await load(50, 20, bad_every=10**9)
    assert all(status == 200 for _, status in answers), answers
    assert await _rows(store) == (1001, 1001)
    calls = server.metric("asyncstore_otlp_batch_spans_count") - calls_before
    assert calls <= 1000 / 4, calls

    # A few requests naming another experiment's trace: only they fail (their batch is
    # retried request by request), the others of their batch are stored.
    answers = await load(20, 10, bad_every=17)
    bad = sum(1 for was_bad, _ in answers if was_bad)
    assert bad > 0 and all(status == (400 if was_bad else 200) for was_bad, status in answers), answers
    good = 200 - bad
    assert await _rows(store) == (1001 + good, 1001 + good)


async def test_a_full_queue_answers_429_with_retry_after(serve: Any, store: AsyncStore) -> None:
    # One span per transaction and one waiting request at most: a burst overflows the queue.
    server = serve("--queue-limit", "1", "--max-batch-spans", "1", "--max-wait-ms", "0")
    exp = await make_experiment(store)
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                 limits=httpx.Limits(max_connections=40, keepalive_expiry=1.0)) as http:
        for _ in range(20):  # bursts until one overflows
            burst = await asyncio.gather(*(
                http.post("/v1/traces", content=_request(1), headers={**PB, "x-mlflow-experiment-id": str(exp)})
                for _ in range(40)
            ))
            for r in burst:
                assert r.status_code in (200, 429), r.text
                if r.status_code == 429:
                    assert r.headers["Retry-After"] == "1" and b"queue is full" in r.content
            statuses += [r.status_code for r in burst]
            if 429 in statuses:
                break
    assert 429 in statuses
    # Exactly the acknowledged requests are stored; the refused ones wrote nothing.
    assert await _rows(store) == (statuses.count(200), statuses.count(200))


async def test_health_ready_metrics(serve: Any, store: AsyncStore) -> None:
    server = serve()
    assert httpx.get(server.url + "/health").status_code == 200
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200, ready.text
    exp = await make_experiment(store)
    assert httpx.post(server.url + "/v1/traces", content=_request(4), headers={**PB, "x-mlflow-experiment-id": str(exp)}).status_code == 200
    assert httpx.post(server.url + "/v1/traces", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    metrics = httpx.get(server.url + "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    for line in ("asyncstore_otlp_spans_received_total 4.0", "asyncstore_otlp_spans_stored_total 4.0",
                 "asyncstore_otlp_spans_rejected_total 0.0", 'asyncstore_otlp_requests_total{code="200"} 1.0',
                 'asyncstore_otlp_requests_total{code="415"} 1.0', "asyncstore_otlp_batch_spans_count 1.0",
                 "asyncstore_otlp_batch_spans_sum 4.0", "asyncstore_otlp_queue_depth 0.0",
                 "asyncstore_otlp_write_seconds_count 1.0"):
        assert line in metrics.text.splitlines(), (line, metrics.text)

    # The schema no longer current: not ready (the process still healthy).
    async with store.uow.transaction() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0001_initial'"))
    not_ready = httpx.get(server.url + "/ready")
    assert not_ready.status_code == 503 and "0001_initial" in not_ready.text and "db upgrade" in not_ready.text
    assert httpx.get(server.url + "/health").status_code == 200


async def test_sigterm_writes_every_accepted_request(serve: Any, store: AsyncStore) -> None:
    server = serve("--max-wait-ms", "50")
    exp = await make_experiment(store)
    statuses: list[int] = []

    async def client(http: httpx.AsyncClient) -> None:
        for _ in range(40):
            try:
                r = await http.post("/v1/traces", content=_request(5), headers={**PB, "x-mlflow-experiment-id": str(exp)})
            except httpx.TransportError:
                return  # the server is gone: this request was never acknowledged
            statuses.append(r.status_code)

    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        load = asyncio.gather(*(client(http) for _ in range(10)))
        while not statuses:
            await asyncio.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        await load
    assert server.stop() in (0, -signal.SIGTERM)
    assert set(statuses) <= {200, 503}, statuses
    # Every acknowledged request is in the database (others may be too: written, the answer lost).
    assert (await _rows(store))[0] >= 5 * statuses.count(200)


def test_serve_without_the_extra_prints_the_install_hint(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.util, sys\n_find = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'uvicorn' else _find(name, *a)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "asyncstore.cli", "serve"], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=60,
    )
    assert result.returncode == 2 and "pip install 'asyncstore[server]'" in result.stderr, result


async def test_create_app_on_an_open_store_uses_it_and_leaves_it_open(store: AsyncStore) -> None:
    """``create_app(store)`` under uvicorn on the test's own loop; the default experiment applies."""
    import uvicorn

    from asyncstore.server import create_app

    exp = await make_experiment(store)
    port = closed_port()
    server = uvicorn.Server(uvicorn.Config(create_app(store, default_experiment_id=exp), port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            while not server.started:
                await asyncio.sleep(0.01)
            tid = random.randbytes(16)
            response = await http.post("/v1/traces", content=_request(3, trace_id=tid), headers=PB)
            assert response.status_code == 200 and response.content == b""
    finally:
        server.should_exit = True
        await serving
    # The app's shutdown left the store open: it still reads.
    trace = await store.traces.get("tr-" + tid.hex())
    assert trace.info.experiment_id == str(exp) and len(trace.spans) == 3


_TRACED = """
import mlflow

@mlflow.trace(span_type="LLM")
def answer(question):
    return {"answer": question.upper()}

@mlflow.trace(name="chat turn")
def turn(question):
    with mlflow.start_span("retrieve", span_type="RETRIEVER") as span:
        span.set_inputs({"q": question})
        span.set_outputs(["doc-1", "doc-2"])
    print(mlflow.get_active_trace_id())
    return answer(question)["answer"]

turn("hello")
"""


def test_mlflow_tracing_exports_to_serve_and_mlflow_reads_the_trace(
    backend: str, mlflow_uri: str, tmp_path: Path  # noqa: F811
) -> None:
    """MLflow's own tracing, exporting over OTLP/HTTP (its documented environment
    variables), into an MLflow database served by ``asyncstore serve``: MLflow's store
    reads the trace and its spans as asyncstore stored them, linked to the run named by
    ``x-mlflow-run-id`` as MLflow's own server links it."""
    ml = _mlflow_store(mlflow_uri, backend)
    try:
        exp = ml.create_experiment("otlp from mlflow")
        run = ml.create_run(exp, user_id="ann", start_time=0, tags=[], run_name="traced").info.run_id
        server = Served(mlflow_uri, tmp_path)
        try:
            script = tmp_path / "traced.py"
            script.write_text(_TRACED)
            env = {
                **os.environ,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": server.url + "/v1/traces",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"x-mlflow-experiment-id={exp},x-mlflow-run-id={run}",
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'unused.db'}",  # never the served database
            }
            done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                                  cwd=tmp_path, timeout=120)
            assert done.returncode == 0, done.stderr
            trace_id = done.stdout.split()[-1]
        finally:
            assert server.stop() in (0, -signal.SIGTERM)
        trace = ml.get_trace(trace_id)
        ml_linked = [t.trace_id for t in ml.search_traces([exp], filter_string=f"run_id = '{run}'")[0]]
    finally:
        ml.engine.dispose()
    assert trace.info.experiment_id == exp and trace.info.state.value == "OK"
    spans = {s.name: s for s in trace.data.spans}
    assert set(spans) == {"chat turn", "retrieve", "answer"}
    assert spans["retrieve"].parent_id == spans["chat turn"].span_id == spans["answer"].parent_id
    assert spans["answer"].span_type == "LLM" and spans["retrieve"].span_type == "RETRIEVER"
    assert spans["answer"].inputs == {"question": "hello"} and spans["answer"].outputs == {"answer": "HELLO"}
    assert spans["retrieve"].outputs == ["doc-1", "doc-2"]
    assert ml_linked == [trace_id]
    assert trace.info.request_preview == '{"question": "hello"}'

    async def ours() -> Any:
        async with AsyncStore.open(mlflow_uri) as store:
            return await store.traces.get(trace_id)

    stored = asyncio.run(ours())
    assert {s.name: s.span_type for s in stored.spans} == {n: s.span_type for n, s in spans.items()}


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--writers", "0", "positive integer"), ("--queue-limit", "-3", "positive integer"),
    ("--max-batch-spans", "x", "positive integer"), ("--max-body-mb", "0", "positive number"),
    ("--max-wait-ms", "-1", "number of at least 0"), ("--grace-seconds", "nan", "number of at least 0"),
    ("--port", "70000", "port number from 1 to 65535"),
])
def test_serve_refuses_bad_options_naming_them(option: str, value: str, says: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from asyncstore import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["serve", option, value])
    assert info.value.code == 2
    assert f"argument {option}: expected a {says}" in capsys.readouterr().err


def test_serve_shortens_the_switch_interval_while_it_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The serve command runs uvicorn with the GIL switch interval at SWITCH_INTERVAL
    (the drivers' threads get their results back to the loop sooner) and restores it."""
    import uvicorn

    from asyncstore import cli
    from asyncstore.server import command

    seen: list[float] = []

    async def serve(self: Any) -> None:
        seen.append(sys.getswitchinterval())
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "serve", serve)
    before = sys.getswitchinterval()
    assert before != command.SWITCH_INTERVAL
    assert cli.main(["serve", "--uri", f"sqlite:///{tmp_path / 'serve.db'}", "--upgrade"]) == 0
    assert seen == [command.SWITCH_INTERVAL]
    assert sys.getswitchinterval() == before
