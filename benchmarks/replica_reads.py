"""Read throughput with a replica beside the primary alone, taking turns in one run.

    .venv/bin/python benchmarks/replica_reads.py [PRIMARY_URI [REPLICA_URI]]

Defaults: the PostgreSQL test server and its streaming replica on port 5433
(``scripts/clusters/pg-replica.sh start``). A scratch database is created on the
primary (random name, dropped at the end) and read on the replica under the same name.
It holds 200 runs (20 metrics, 5 params, 5 tags each) and 200 traces of 10 spans.

Then, for each of 8 rounds after a warm-up, the two set-ups take turns for 3 seconds
each: 16 concurrent callers, each looping over one read of every kind (``runs.get``,
``runs.search``, ``traces.get``, ``traces.search``). "primary" is a store without
replicas; "replica" a store whose reads all go to the replica. Prints the median
reads/s of each, and the share of reads the replica served.

On one 2-core machine the replica competes with the primary and the client for the same
cores, so the figure shows the routing's overhead, not the scaling a replica on its own
machine brings (README, "Read replicas").
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time

from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from asyncstore.bench.database import create_scratch
from asyncstore.entities import Metric, Param, RunTag, Span

ROUNDS, SECONDS, CALLERS, RUNS, TRACES = 8, 3.0, 16, 200, 200


async def fill(store: AsyncStore) -> tuple[list[str], list[str], str]:
    exp = await store.experiments.create("replica-reads")
    runs, traces = [], []
    for r in range(RUNS):
        run_id = (await store.runs.create(exp)).info.run_id
        await store.runs.log_batch(
            run_id,
            [Metric(f"m{k}", random.random(), 1_000 + k, k) for k in range(20)],
            [Param(f"p{k}", str(k)) for k in range(5)],
            [RunTag(f"t{k}", str(r)) for k in range(5)],
        )
        runs.append(run_id)
    t0 = 1_700_000_000_000_000_000
    for t in range(TRACES):
        trace_id = f"tr-{t:032x}"
        root = f"{t:08x}{0:08x}"
        spans = [Span(trace_id, root, "root", t0 + t, t0 + t + 10_000)] + [
            Span(trace_id, f"{t:08x}{i:08x}", f"child_{i}", t0 + t + i, t0 + t + i + 5, parent_span_id=root)
            for i in range(1, 10)
        ]
        await store.spans.log_spans(exp, spans)
        traces.append(trace_id)
    return runs, traces, exp


async def measure(store: AsyncStore, runs: list[str], traces: list[str], exp: str) -> float:
    deadline = time.perf_counter() + SECONDS
    done = 0

    async def caller(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            await store.runs.get(rng.choice(runs))
            await store.runs.search([exp], "metrics.m1 > 0.5", max_results=20)
            await store.traces.get(rng.choice(traces))
            await store.traces.search([exp], max_results=20)
            done += 4

    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(CALLERS)))
    return done / (time.perf_counter() - start)


async def caught_up(replica: AsyncStore, trace_id: str) -> None:
    for _ in range(600):
        try:
            await replica.traces.get(trace_id)
            return
        except Exception:
            await asyncio.sleep(0.05)
    raise SystemExit("the replica did not catch up in 30 s; is it streaming from this primary?")


async def main(primary_uri: str, replica_uri: str) -> None:
    scratch = await create_scratch(primary_uri, "replica_reads")
    replica = make_url(replica_uri).set(database=scratch.name).render_as_string(hide_password=False)
    try:
        async with AsyncStore.open(scratch.uri) as alone, AsyncStore.open(
            scratch.uri, replicas=[replica], replica_max_lag=3600
        ) as routed:
            runs, traces, exp = await fill(alone)
            await caught_up(routed, traces[-1])
            rates: dict[str, list[float]] = {"primary": [], "replica": []}
            for round_ in range(ROUNDS + 1):
                for name, store in (("primary", alone), ("replica", routed)):
                    rate = await measure(store, runs, traces, exp)
                    if round_:
                        rates[name].append(rate)
            [status] = routed.replica_status()
            total = sum(len(v) for v in rates.values())
            print(f"{scratch.server_version}; {CALLERS} callers, {ROUNDS} rounds of {SECONDS:g} s per set-up ({total} in all)")
            for name, values in rates.items():
                print(f"  {name:>8}: {statistics.median(values):,.0f} reads/s")
            ratio = statistics.median(rates["replica"]) / statistics.median(rates["primary"])
            print(f"  replica / primary alone: {ratio:.2f}; replica state {status.state.value}, "
                  f"{status.reads:,} read transactions served by it")
    finally:
        await scratch.drop()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(
        args[0] if args else "postgresql://postgres@127.0.0.1:5432/postgres",
        args[1] if len(args) > 1 else "postgresql://postgres@127.0.0.1:5433/postgres",
    ))
