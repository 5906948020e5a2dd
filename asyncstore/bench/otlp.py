"""``otlp_ingest`` and ``otlp_soak``: OTLP/HTTP exports into a real ``asyncstore serve``.

``otlp_ingest`` (only when ``--workload`` names it: it starts server processes):
:data:`OTLP_EXPORTERS` concurrent exporters POST OTLP/HTTP protobuf requests of
:data:`OTLP_REQUEST_SPANS` spans (:data:`OTLP_REQUEST_SPANS` / :data:`OTLP_TRACE_SPANS`
whole traces, each a root and its children, with the attributes of
:func:`~asyncstore.bench.data.span_batch`) through one ``aiohttp.ClientSession`` with
keep-alive connections (aiohttp's HTTP parser is compiled: its exporters use about a
fifth of the CPU of httpx's pure-Python ones, CPU that the server under test and its
database share with them on a small machine). The systems:

- ``asyncstore``: ``asyncstore serve`` started as a subprocess on the scratch
  database (a free port, waited for on ``/health``, stopped with SIGTERM);
- ``direct``: the ceiling without HTTP: the same requests decoded beforehand
  (``from_otlp_request``, untimed) and written by ``store.spans.log_spans`` in the
  bench's process, one call per request, from as many concurrent callers, into a
  scratch database of its own (:class:`DirectIngest`);
- with ``--compare mlflow``, ``asyncstore_on_mlflow_schema`` (``asyncstore serve`` on
  a database MLflow's migrations made) and ``mlflow``: MLflow's own tracking server,
  ``mlflow server --backend-store-uri <sync URI> --host 127.0.0.1 --port P --workers 1``
  on the MLflow peer's database (the URI given in ``MLFLOW_BACKEND_STORE_URI``, the
  option's variable, so that ``ps`` shows no password; :class:`MlflowServerIngest`),
  receiving the same requests at its ``/v1/traces`` with the ``x-mlflow-experiment-id``
  header.

Every HTTP system reports the resident memory of its server (the process and its
children) at the start of the first recorded repetition and at the end of the last
(``rss_mb_start``, ``rss_mb_end``; each repetition's readings are in ``samples``),
and checks that the database holds every span it sent (``spans_stored``, over the
recorded repetitions). ``asyncstore serve`` also reports its group commit from its
``/metrics``: ``transactions`` (``log_spans`` calls) and ``write_s`` (seconds in
them).

``otlp_soak`` (``--workload otlp_soak`` or ``--otlp-minutes M``): the same exporters
against ``asyncstore serve`` alone for M minutes (default :data:`SOAK_MINUTES`), the
requests built on the fly, once; every :data:`SOAK_SAMPLE_SECONDS` the server's
resident memory and the throughput since the last reading are printed and kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from asyncstore import schema
from asyncstore.bench.data import SpanRow, span_batch
from asyncstore.bench.database import ScratchDatabase, create_scratch
from asyncstore.bench.measure import Outcome, fan_out, timed
from asyncstore.bench.scale import SPAN_BATCH, Scale
from asyncstore.bench.workloads import Spec, _StoreWorkload, unique
from asyncstore.entities import Span
from asyncstore.store import AsyncStore

if TYPE_CHECKING:
    import aiohttp
    import psutil

    from asyncstore.bench.mlflow_peer import MlflowPeer

OTLP_EXPORTERS = 16
"""Concurrent exporters (an OpenTelemetry Collector's or many services' export workers)."""
OTLP_REQUEST_SPANS = 50
"""Spans per OTLP request."""
OTLP_TRACE_SPANS = 10
"""Spans per trace in a request (a root and its children): 5 whole traces per request."""
SOAK_MINUTES = 10.0
"""Default duration of ``otlp_soak``."""
SOAK_SAMPLE_SECONDS = 30.0
"""How often ``otlp_soak`` reads the server's memory (shorter runs: a fifth of their duration)."""
START_TIMEOUT = 180.0
"""Seconds a server may take to answer ``/health`` (MLflow's imports on a busy 2-core machine)."""
STOP_TIMEOUT = 60.0
"""Seconds a server may take to exit after SIGTERM before it is killed."""
RETRYABLE = frozenset({429, 503})
"""Answers after which an exporter sends the request again (OTLP/HTTP's throttling and
unavailability; MLflow's server answers 503 to a deadlock on MariaDB)."""
RETRIES = 8
"""The most times one request is sent again."""
RETRY_FIRST_WAIT = 0.1
RETRY_MAX_WAIT = 2.0
"""Seconds between tries without ``Retry-After``: the first, doubling up to the cap."""
EXPERIMENT_HEADER = "x-mlflow-experiment-id"
PROTOBUF = "application/x-protobuf"
INSTALL_HINT = "pip install 'asyncstore[bench]'  (aiohttp, psutil and the server extra)"
_NEEDED = ("aiohttp", "psutil", "starlette", "uvicorn", "prometheus_client", "opentelemetry.proto")
_GOALS = "goals: at least 60% of direct, 10x MLflow's server"

OTLP_INGEST = Spec(
    "otlp_ingest", "spans/s",
    f"{OTLP_EXPORTERS} exporters POST OTLP/HTTP protobuf requests of {OTLP_REQUEST_SPANS} spans "
    f"({OTLP_REQUEST_SPANS // OTLP_TRACE_SPANS} traces of {OTLP_TRACE_SPANS}, ~1 KB of attributes each: ~45 KB) to "
    "asyncstore serve (keep-alive); direct: the same calls to store.spans.log_spans in-process; mlflow: "
    f"`mlflow server --workers 1`; {_GOALS}",
    OTLP_EXPORTERS, lambda s: s.span_batches * SPAN_BATCH, direct=True,
)
"""The ``otlp_ingest`` workload (opt-in: ``--workload otlp_ingest``)."""


def soak_spec(minutes: float = SOAK_MINUTES) -> Spec:
    """The ``otlp_soak`` workload of ``minutes`` minutes."""
    return Spec(
        "otlp_soak", "spans/s",
        f"otlp_ingest's exporters against asyncstore serve for {minutes:g} minute{'' if minutes == 1 else 's'}, "
        "requests built on the fly, "
        f"once; the server's resident memory (MB) every {_sample_every(minutes * 60):g} s must stay flat after the "
        "first tenth of the run",
        OTLP_EXPORTERS, lambda s: 0, once=True, mlflow=False, family="otlp_ingest", minutes=minutes,
    )


def _sample_every(seconds: float) -> float:
    """Seconds between the soak's readings: :data:`SOAK_SAMPLE_SECONDS`, or a fifth of a shorter run."""
    return min(SOAK_SAMPLE_SECONDS, seconds / 5)


def missing_packages() -> list[str]:
    """The packages the OTLP workloads need that are not installed."""
    found = []
    for name in _NEEDED:
        try:
            installed = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a dotted name whose parent is missing
            installed = False
        if not installed:
            found.append(name)
    return found


# --- the requests --------------------------------------------------------------------


def request_rows(salt: str, rep: int, index: int) -> list[SpanRow]:
    """The spans of request ``index`` of repetition ``rep``: whole traces, new ones every time."""
    return span_batch(salt, rep, index, size=OTLP_REQUEST_SPANS, per_trace=OTLP_TRACE_SPANS)


def _attribute(kv: Any, key: str, value: Any) -> None:
    """Set an OTLP ``KeyValue``: scalars as themselves, objects as JSON text (as tracing SDKs send inputs)."""
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    elif isinstance(value, str):
        kv.value.string_value = value
    else:
        kv.value.string_value = json.dumps(value, separators=(",", ":"))


def otlp_request(rows: Sequence[SpanRow]) -> bytes:
    """A serialised OTLP ``ExportTraceServiceRequest`` of ``rows`` (one resource, one scope).

    The span type goes in ``mlflow.spanType`` as MLflow's SDK writes it (JSON text).
    """
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
    from opentelemetry.proto.trace.v1.trace_pb2 import Status

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    _attribute(resource_spans.resource.attributes.add(), "service.name", "asyncstore-bench")
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "asyncstore.bench"
    for r in rows:
        span = scope_spans.spans.add()
        span.trace_id = bytes.fromhex(r.trace_id.removeprefix("tr-"))
        span.span_id = bytes.fromhex(r.span_id)
        if r.parent_span_id:
            span.parent_span_id = bytes.fromhex(r.parent_span_id)
        span.name = r.name
        span.kind = OtlpSpan.SPAN_KIND_INTERNAL
        span.start_time_unix_nano = r.start_ns
        span.end_time_unix_nano = r.end_ns
        span.status.code = Status.STATUS_CODE_OK
        _attribute(span.attributes.add(), "mlflow.spanType", json.dumps(r.span_type))
        for key, value in r.attributes.items():
            _attribute(span.attributes.add(), key, value)
    body: bytes = request.SerializeToString()
    return body


def _retry_wait(retry_after: str | None, attempt: int) -> float:
    """Seconds to wait before try ``attempt + 2``: ``Retry-After`` (seconds) if it says, else a doubling wait."""
    try:
        return min(RETRY_MAX_WAIT, max(0.0, float(retry_after))) if retry_after else _backoff(attempt)
    except ValueError:  # an HTTP date: not worth parsing for a bench
        return _backoff(attempt)


def _backoff(attempt: int) -> float:
    return float(min(RETRY_MAX_WAIT, RETRY_FIRST_WAIT * 2**attempt))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the server processes ------------------------------------------------------------


class ServerProcess:
    """A server run as a subprocess: started, waited for on ``/health``, stopped with SIGTERM.

    Its output goes to a log file in a temporary directory (also its working
    directory), shown when it fails to start and removed by :meth:`stop`.

    Args:
        name: for messages (``asyncstore serve``, ``mlflow server``).
        argv: the command; ``port`` must be in it.
        port: where it listens on 127.0.0.1.
        env: variables added to this process's environment (URIs go here, not in
            ``argv``, so that ``ps`` shows no password).
    """

    def __init__(self, name: str, argv: Sequence[str], port: int, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.workdir = tempfile.mkdtemp(prefix="asyncstore_bench_server_")
        self.log_path = os.path.join(self.workdir, "server.log")
        self.process: asyncio.subprocess.Process | None = None
        self.processes: dict[int, psutil.Process] = {}
        """Every process of the server seen so far (the process and its children), by id."""

    @property
    def pid(self) -> int:
        """The process id of the started command."""
        assert self.process is not None, "not started"
        return self.process.pid

    async def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the command and wait until ``/health`` answers 200.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout`` (with its log's tail);
                it is stopped then, and on any other error or interruption meanwhile.
        """
        with open(self.log_path, "wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env=self.env, cwd=self.workdir,
            )
        try:
            await self._healthy(timeout)
        except BaseException:  # not answering, or interrupted meanwhile: stop it before going on
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _healthy(self, timeout: float) -> None:
        import aiohttp

        assert self.process is not None
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as client:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    if await _get_status(client, self.url + "/health") == 200:
                        self.rss_mb()  # note its children
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not answer /health within {timeout:.0f} s: {self.log_tail()}")
                await asyncio.sleep(0.2)

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's output."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def rss_mb(self) -> float:
        """Resident memory of the server's process and its children, in MB (psutil)."""
        import psutil

        try:
            main = psutil.Process(self.pid)
            processes = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            raise RuntimeError(f"{self.name} is gone: {self.log_tail()}") from None
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
                self.processes.setdefault(process.pid, process)
        return total / 2**20

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait for the exit (kill after ``timeout``); a child left behind is killed by its id.

        Returns the exit status (negative: the signal that ended it), None if never started.
        """
        if self.process is None:
            return None
        with contextlib.suppress(RuntimeError):
            self.rss_mb()  # note the children, to check after the exit
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()
        for pid, process in self.processes.items():
            if pid != self.process.pid and _running(process):
                process.kill()  # psutil checks the id was not reused
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode

    def stopped(self) -> bool:
        """Whether every process of the server has exited."""
        return self.process is not None and self.process.returncode is not None and not any(
            _running(p) for p in self.processes.values()
        )


async def _get_status(client: aiohttp.ClientSession, url: str) -> int:
    async with client.get(url) as response:
        await response.read()
        return response.status


def _exporters(concurrency: int) -> aiohttp.ClientSession:
    """The exporters' HTTP client: ``concurrency`` keep-alive connections, 120 s per request."""
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=120)
    )


def _running(process: psutil.Process) -> bool:
    """Whether ``process`` (the very one: psutil compares creation times) runs and is not a zombie."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _serve_command(port: int) -> list[str]:
    return [sys.executable, "-m", "asyncstore.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning"]


def _mlflow_command(port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]


MLFLOW_SERVER_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
"""What the MLflow server is run with beside its defaults: no telemetry upload, and no job
runner processes (MLflow's job execution, unrelated to trace ingestion)."""


# --- the workloads -------------------------------------------------------------------


async def _count_spans(store: AsyncStore, experiment_id: str) -> int:
    async with store.engine.connect() as conn:
        query = select(func.count()).select_from(schema.spans).where(schema.spans.c.experiment_id == int(experiment_id))
        return int((await conn.execute(query)).scalar_one())


def _ignore(line: str) -> None:
    """Where notes go when nobody listens."""


def _metric(text: str, name: str) -> float:
    """The value of sample ``name`` in Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


class _ServerIngest:
    """The HTTP systems (a mixin): exporters POST prepared OTLP requests to a :class:`ServerProcess`.

    A subclass creates ``experiment_id`` and starts ``server`` in ``setup`` and counts
    the spans of the experiment in :meth:`stored`.
    """

    scale: Scale
    spec: Spec
    experiment_id: str
    server: ServerProcess | None = None
    bodies: Sequence[bytes] = ()
    sent = 0
    """Spans sent and answered 200 so far (every repetition, warm-up included)."""
    retries = 0
    """Requests sent again after a 429 or 503 so far."""
    note: Callable[[str], None]
    """Where the soak's readings are printed (the runner sets its progress's ``note``)."""

    async def stored(self) -> int:
        """Spans of the experiment in the database."""
        raise NotImplementedError

    async def writer(self) -> dict[str, float]:
        """Counters of the server's writer (asyncstore serve's group commit); none by default."""
        return {}

    def _server(self) -> ServerProcess:
        assert self.server is not None, "setup() starts the server"
        return self.server

    def _salt(self) -> str:
        return f"otlp-{type(self).__name__}-{self.experiment_id}"

    async def prepare(self, rep: int) -> None:
        """This repetition's requests, serialised (new traces every repetition); none for the soak."""
        if not self.spec.minutes:
            count = max(1, self.spec.size(self.scale) // OTLP_REQUEST_SPANS)
            self.bodies = [otlp_request(request_rows(self._salt(), rep, i)) for i in range(count)]

    def _recorded(self, rep: int) -> tuple[bool, bool]:
        """Whether ``rep`` is the first and whether it is the last recorded repetition (the runner's)."""
        first = 0 if self.spec.once else self.scale.warmup
        last = first if self.spec.once else first + self.scale.repetitions - 1
        return rep == first, rep == last

    async def _post(self, client: aiohttp.ClientSession, body: bytes) -> None:
        """POST one request; on 429 or 503 wait and send it again, as OTLP exporters do
        (``Retry-After`` if given, else :data:`RETRY_FIRST_WAIT` doubling up to
        :data:`RETRY_MAX_WAIT`), at most :data:`RETRIES` times (counted in ``retries``)."""
        headers = {"Content-Type": PROTOBUF, EXPERIMENT_HEADER: self.experiment_id}
        for attempt in range(RETRIES + 1):
            async with client.post(self._server().url + "/v1/traces", data=body, headers=headers) as response:
                answer = await response.read()  # read whole: the connection goes back to the pool
                status, retry_after = response.status, response.headers.get("Retry-After")
            if status == 200:
                self.sent += OTLP_REQUEST_SPANS
                return
            if status not in RETRYABLE or attempt == RETRIES:
                break
            self.retries += 1
            await asyncio.sleep(_retry_wait(retry_after, attempt))
        text = answer[:300].decode(errors="replace")
        raise RuntimeError(f"{self._server().name} answered {status}: {text}")

    async def run(self, rep: int) -> Outcome:
        """POST every request from the exporters; the timed part is the posting alone."""
        if self.spec.minutes:
            return await self._soak()
        server = self._server()
        before = await self.writer()
        retries = self.retries
        rss_start = server.rss_mb()
        latencies: list[float] = []
        async with _exporters(self.spec.concurrency) as client:
            bodies = self.bodies

            async def export(i: int) -> None:
                await timed(lambda: self._post(client, bodies[i]), latencies)

            started = time.perf_counter()
            await fan_out(len(bodies), self.spec.concurrency, export)
            seconds = time.perf_counter() - started
        rss_end = server.rss_mb()
        after = await self.writer()
        stored = await self.stored()
        if stored != self.sent:
            raise RuntimeError(f"{server.name} answered 200 for {self.sent} spans but the database holds {stored}")
        spans = len(bodies) * OTLP_REQUEST_SPANS
        extra = {"spans_stored": float(spans), "retries": float(self.retries - retries),
                 **{k: round(after[k] - before.get(k, 0.0), 3) for k in after}}
        first, last = self._recorded(rep)
        if first:
            extra["rss_mb_start"] = round(rss_start, 1)
        if last:
            extra["rss_mb_end"] = round(rss_end, 1)
        samples = [{"rep": rep, "t_s": 0.0, "rss_mb": round(rss_start, 1)},
                   {"rep": rep, "t_s": round(seconds, 3), "rss_mb": round(rss_end, 1)}]
        return Outcome(spans, latencies=latencies, extra=extra, seconds=seconds, samples=samples)

    async def _soak(self) -> Outcome:
        """Post requests built on the fly for ``spec.minutes``; read memory and throughput along the way."""
        server = self._server()
        duration = self.spec.minutes * 60
        every = _sample_every(duration)
        latencies: list[float] = []
        samples: list[dict[str, float]] = []
        index = 0
        spans = 0
        last = (0.0, 0)  # time and spans of the last reading
        salt = self._salt()

        def reading(t: float) -> None:
            nonlocal last
            rss = server.rss_mb()
            rate = (spans - last[1]) / (t - last[0]) if t > last[0] else 0.0
            samples.append({"t_s": round(t, 1), "spans": spans, "spans_per_s": round(rate, 1), "rss_mb": round(rss, 1)})
            self.note(f"otlp_soak: {t:6.0f} s  {spans:>10,} spans  {rate:>8,.0f} spans/s  server RSS {rss:7.1f} MB")
            last = (t, spans)

        async with _exporters(self.spec.concurrency) as client:
            started = time.perf_counter()
            deadline = started + duration

            async def exporter() -> None:
                nonlocal index, spans
                while time.perf_counter() < deadline:
                    index += 1
                    body = otlp_request(request_rows(salt, 0, index))
                    await timed(lambda: self._post(client, body), latencies)
                    spans += OTLP_REQUEST_SPANS

            async def sampler() -> None:
                reading(0.0)
                k = 1
                while k * every < duration - every / 2:  # the last reading is taken once the exporters stop
                    await asyncio.sleep(max(0.0, started + k * every - time.perf_counter()))
                    reading(time.perf_counter() - started)
                    k += 1

            await asyncio.gather(sampler(), *(exporter() for _ in range(self.spec.concurrency)))
            seconds = time.perf_counter() - started
            reading(seconds)
        stored = await self.stored()
        if stored != self.sent:
            raise RuntimeError(f"{server.name} answered 200 for {self.sent} spans but the database holds {stored}")
        rss = [s["rss_mb"] for s in samples]
        at_10pct = next(s["rss_mb"] for s in samples if s["t_s"] >= duration / 10 or s is samples[-1])
        extra = {"spans_stored": float(stored), "retries": float(self.retries), "rss_mb_start": rss[0],
                 "rss_mb_at_10pct": at_10pct,
                 "rss_mb_end": rss[-1], "rss_mb_max": max(rss)}
        return Outcome(spans, latencies=latencies, extra=extra, seconds=seconds, samples=samples)

    async def teardown(self) -> None:
        """Stop the server (SIGTERM)."""
        if self.server is not None:
            await self.server.stop()


class OtlpIngest(_ServerIngest, _StoreWorkload):
    """``asyncstore serve`` on the store's database, fed by the exporters (``asyncstore``, and
    ``asyncstore_on_mlflow_schema`` on MLflow's tables)."""

    def __init__(self, store: AsyncStore, scale: Scale, spec: Spec | None = None) -> None:
        _StoreWorkload.__init__(self, store, scale, spec or OTLP_INGEST)
        self.note = _ignore

    async def setup(self) -> None:
        """The experiment, then the server on the same database."""
        await _StoreWorkload.setup(self)
        port = free_port()
        self.server = ServerProcess(
            "asyncstore serve", _serve_command(port), port, env={"ASYNCSTORE_DATABASE_URI": self.store.config.uri}
        )
        await self.server.start()

    async def stored(self) -> int:
        """Spans of the experiment, counted through the bench's own store."""
        return await _count_spans(self.store, self.experiment_id)

    async def writer(self) -> dict[str, float]:
        """``log_spans`` calls (transactions) and their seconds so far, from ``/metrics``."""
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
            async with client.get(self._server().url + "/metrics") as response:
                text = await response.text()
        return {"transactions": _metric(text, "asyncstore_otlp_batch_spans_count"),
                "write_s": _metric(text, "asyncstore_otlp_write_seconds_sum")}


class DirectIngest(_StoreWorkload):
    """``direct``: the requests of :class:`OtlpIngest`, decoded beforehand, written by ``log_spans`` in-process.

    One call per request from as many concurrent callers as there are exporters: the
    store's work without HTTP, body parsing or the server's group commit. It writes
    into a scratch database of its own (made in :meth:`setup` on the server or in the
    folder of ``uri``, dropped in :meth:`teardown`), so that the tables of
    ``asyncstore serve`` hold only the spans it received, as MLflow's server's hold
    only its own: where an insert costs more as its table grows (SQLite, MariaDB),
    every HTTP system is measured on tables of the same size.
    """

    def __init__(self, uri: str | None, scale: Scale, spec: Spec | None = None) -> None:
        self.uri = uri
        self.scale = scale
        self.spec = spec or OTLP_INGEST
        self.experiment_id = ""
        self.scratch: ScratchDatabase | None = None
        self.opened: AsyncStore | None = None
        self.batches: list[list[Span]] = []
        self.sent = 0

    async def setup(self) -> None:
        """The database of its own, then the experiment."""
        self.scratch = await create_scratch(self.uri, "direct")
        self.store = self.opened = await AsyncStore.open(self.scratch.uri)
        await super().setup()

    async def teardown(self) -> None:
        """Close the store, drop the database."""
        try:
            if self.opened is not None:
                await self.opened.close()
        finally:
            if self.scratch is not None:
                await self.scratch.drop()

    async def prepare(self, rep: int) -> None:
        """This repetition's requests as the server would decode them (untimed)."""
        from asyncstore.otel import from_otlp_request

        count = max(1, self.spec.size(self.scale) // OTLP_REQUEST_SPANS)
        salt = f"otlp-direct-{self.experiment_id}"
        self.batches = [from_otlp_request(otlp_request(request_rows(salt, rep, i))) for i in range(count)]

    async def run(self, rep: int) -> Outcome:
        """Write every request's spans, ``concurrency`` calls at a time."""
        latencies: list[float] = []
        batches = self.batches

        async def write(i: int) -> None:
            await timed(lambda: self.store.spans.log_spans(self.experiment_id, batches[i]), latencies)

        started = time.perf_counter()
        await fan_out(len(batches), self.spec.concurrency, write)
        seconds = time.perf_counter() - started
        spans = sum(len(b) for b in batches)
        self.sent += spans
        stored = await _count_spans(self.store, self.experiment_id)
        if stored != self.sent:
            raise RuntimeError(f"log_spans wrote {self.sent} spans but the database holds {stored}")
        return Outcome(spans, latencies=latencies, extra={"spans_stored": float(spans)}, seconds=seconds)


class MlflowServerIngest(_ServerIngest):
    """``mlflow``: MLflow's tracking server on the MLflow peer's database, fed by the same exporters.

    Run as ``mlflow server --backend-store-uri <sync URI> --host 127.0.0.1 --port P
    --workers 1``: MLflow's defaults (uvicorn serving its FastAPI app, whose
    ``POST /v1/traces`` decodes the request and calls ``log_spans`` in a thread) but
    one worker process instead of 4, as ``asyncstore serve`` is one, and with
    :data:`MLFLOW_SERVER_ENV`. The backend store URI is passed in
    ``MLFLOW_BACKEND_STORE_URI``. The experiment is made through the peer's store,
    in the same database.
    """

    def __init__(self, peer: MlflowPeer, scale: Scale, spec: Spec | None = None) -> None:
        self.peer = peer
        self.scale = scale
        self.spec = spec or OTLP_INGEST
        self.experiment_id = ""
        self.note = _ignore

    async def setup(self) -> None:
        """The experiment, then the server."""
        self.experiment_id = str(await asyncio.to_thread(self.peer.tracking.create_experiment, unique("otlp-mlflow")))
        port = free_port()
        env = {**MLFLOW_SERVER_ENV, "MLFLOW_BACKEND_STORE_URI": self.peer.scratch.sync_uri()}
        self.server = ServerProcess("mlflow server", _mlflow_command(port), port, env=env)
        await self.server.start()

    async def stored(self) -> int:
        """Spans of the experiment in MLflow's database (the same ``spans`` table)."""

        def count() -> int:
            query = select(func.count()).select_from(schema.spans).where(
                schema.spans.c.experiment_id == int(self.experiment_id))
            with self.peer.tracking.engine.connect() as conn:
                return int(conn.execute(query).scalar_one())

        return await asyncio.to_thread(count)
