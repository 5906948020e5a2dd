"""Python time per span on the path of ``asyncstore serve``, with no database and no HTTP.

    .venv/bin/python benchmarks/otlp_cpu.py

Builds the requests of ``asyncstore bench --workload otlp_ingest`` (20 requests of
50 spans: 5 traces of 10, ~1 KB of attributes each) and times, on this process's
one core, best of 7 rounds of 5 passes:

- ``decode``: ``asyncstore.otel.from_otlp_request`` (protobuf bytes to ``Span``
  entities, MLflow's attribute rules included), what serve does per request;
- ``prepare``: ``asyncstore.tracing.rows.prepare`` of the decoded spans (checks,
  MLflow's span JSON, derived values), what ``log_spans`` does before its statements;
- ``prepare, bench batches``: the same for the 1,000-span batches of ``asyncstore
  bench --workload log_spans`` (20 spans per trace), for comparison with its ceilings.

Prints microseconds per span for each. Serve's throughput is bounded by the sum
(plus HTTP and the statements), so this is where its CPU goes.
"""

from __future__ import annotations

import timeit

from asyncstore.bench.data import span_batch, to_spans
from asyncstore.bench.otlp import OTLP_REQUEST_SPANS, otlp_request, request_rows
from asyncstore.otel import from_otlp_request
from asyncstore.tracing.rows import prepare

REQUESTS = 20
PASSES, ROUNDS = 5, 7


def main() -> None:
    bodies = [otlp_request(request_rows("cpu", 0, i)) for i in range(REQUESTS)]
    decoded = [from_otlp_request(body) for body in bodies]
    spans = REQUESTS * OTLP_REQUEST_SPANS

    def decode() -> None:
        for body in bodies:
            from_otlp_request(body)

    def prepare_all() -> None:
        for batch in decoded:
            prepare(batch, 1)

    bench_batch = to_spans(span_batch("cpu", 0, 0))

    def prepare_bench_batch() -> None:
        prepare(bench_batch, 1)

    for name, call, count in (("decode", decode, spans), ("prepare", prepare_all, spans),
                              ("prepare, bench batches", prepare_bench_batch, len(bench_batch))):
        best = min(timeit.repeat(call, number=PASSES, repeat=ROUNDS)) / PASSES
        print(f"{name:24s} {best / count * 1e6:6.1f} µs per span")


if __name__ == "__main__":
    main()
