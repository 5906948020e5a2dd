"""Concurrent writers on a 3-node Galera cluster, spread over its nodes, beside the same
writers on the single MariaDB server, taking turns in one run.

    .venv/bin/python benchmarks/galera_writes.py [SINGLE_URI [NODE_URI,NODE_URI,...]]

Defaults: the MariaDB test server (127.0.0.1:3306) and the cluster of
``scripts/clusters/galera.sh start`` (127.0.0.1:3311-3313). A scratch database is created
on each (random name, dropped at the end; on the cluster through the first node, and
reached through every node under the same name).

6 writers, each with a store of its own (writer i on node i mod 3), each logging to a
run and traces of its own: ``log_batch`` of 1,000 metrics, then ``log_spans`` of 1,000
spans (50 traces of 20), 10 calls of each per round; 5 rounds after a warm-up, the
single server and the cluster taking turns. Prints the median metrics/s and spans/s
of each and the cluster's share of the single server's.

All the nodes, the single server and the client share this machine's 2 cores, and a
Galera commit waits for the other nodes to certify it: the figures show what the
cluster costs per write, not what more machines would bring (README, "A MariaDB Galera
cluster").
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from asyncstore.bench.data import metric_batch, span_batch, to_metrics, to_spans
from asyncstore.bench.database import create_scratch

WRITERS, CALLS, ROUNDS = 6, 10, 5


async def writer(uri: str, index: int, round_: int, experiment: str, run_id: str) -> tuple[float, float]:
    """Seconds spent in log_batch and in log_spans by one writer in one round."""
    async with AsyncStore.open(uri, pool_size=2, max_overflow=0) as store:
        batches = [
            to_metrics(metric_batch(round_, c, CALLS)) for c in range(CALLS)
        ]
        span_batches = [to_spans(span_batch(f"w{index}", round_, c)) for c in range(CALLS)]
        start = time.perf_counter()
        for batch in batches:
            await store.runs.log_batch(run_id, metrics=batch)
        metrics_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for spans in span_batches:
            await store.spans.log_spans(experiment, spans)
        return metrics_seconds, time.perf_counter() - start


async def one_round(uris: list[str], round_: int, experiment: str, runs: list[str]) -> tuple[float, float]:
    """Metrics/s and spans/s of all writers together (items over the slowest writer's time)."""
    times = await asyncio.gather(
        *(writer(uris[i % len(uris)], i, round_, experiment, runs[i]) for i in range(WRITERS))
    )
    items = WRITERS * CALLS * 1000
    return items / max(t[0] for t in times), items / max(t[1] for t in times)


async def prepare(uri: str) -> tuple[str, list[str]]:
    async with AsyncStore.open(uri) as store:
        experiment = await store.experiments.create("galera-writes")
        runs = [(await store.runs.create(experiment)).info.run_id for _ in range(WRITERS)]
    return experiment, runs


async def main(single_uri: str, node_uris: list[str]) -> None:
    single = await create_scratch(single_uri, "single")
    cluster = await create_scratch(node_uris[0], "galera")
    nodes = [make_url(u).set(database=cluster.name).render_as_string(hide_password=False) for u in node_uris]
    try:
        setups = {"single server": [single.uri], f"Galera, {len(nodes)} nodes": nodes}
        prepared = {name: await prepare(uris[0]) for name, uris in setups.items()}
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in setups}
        for round_ in range(ROUNDS + 1):
            for name, uris in setups.items():
                rate = await one_round(uris, round_, *prepared[name])
                if round_:
                    rates[name].append(rate)
        print(f"{WRITERS} writers, {CALLS} calls of 1,000 items each per round, median of {ROUNDS} rounds")
        medians = {name: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for name, v in rates.items()}
        for name, (metrics, spans) in medians.items():
            print(f"  {name:>18}: log_batch {metrics:,.0f} metrics/s, log_spans {spans:,.0f} spans/s")
        (m1, s1), (m2, s2) = medians.values()
        print(f"  cluster / single server: log_batch {m2 / m1:.2f}, log_spans {s2 / s1:.2f}")
    finally:
        await single.drop()
        await cluster.drop()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(
        args[0] if args else "mysql://root@127.0.0.1:3306/test",
        args[1].split(",") if len(args) > 1 else [f"mysql://root@127.0.0.1:{p}/test" for p in (3311, 3312, 3313)],
    ))
