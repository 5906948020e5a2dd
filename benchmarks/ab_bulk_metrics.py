"""log_batch with and without the bulk load of the metric history, taking turns.

    .venv/bin/python benchmarks/ab_bulk_metrics.py [URI]

On a scratch database (a SQLite file without URI; on a server, a database with a
random name, dropped at the end), 12 rounds of 10 calls of 1,000 metrics each per
path, the paths alternating round by round; the first round is a warm-up. Prints
the median metrics/s of each path. "insert" is the path taken when the load gives
way (asyncstore.bulk.BULK_MIN raised out of reach).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from asyncstore import AsyncStore, bulk
from asyncstore.bench.database import create_scratch
from asyncstore.entities import Metric

ROUNDS, CALLS, METRICS, KEYS = 12, 10, 1000, 100


async def main(uri: str | None) -> None:
    scratch = await create_scratch(uri, "ab-bulk")
    normal = bulk.BULK_MIN
    try:
        async with AsyncStore.open(scratch.uri) as store:
            exp = await store.experiments.create("ab")
            rates: dict[str, list[float]] = {"load": [], "insert": []}
            step = 0
            for round_ in range(ROUNDS):
                for path in rates:
                    bulk.BULK_MIN = normal if path == "load" else sys.maxsize
                    run = (await store.runs.create(exp)).info.run_id
                    batches = []
                    for _ in range(CALLS):
                        batches.append([
                            Metric(f"metric_{j % KEYS:03d}", j * 0.5 + step, 1000 + step + j // KEYS, step + j // KEYS)
                            for j in range(METRICS)
                        ])
                        step += METRICS // KEYS
                    start = time.perf_counter()
                    for metrics in batches:
                        await store.runs.log_batch(run, metrics=metrics)
                    if round_:
                        rates[path].append(CALLS * METRICS / (time.perf_counter() - start))
            for path, values in rates.items():
                print(f"{path:>6}: {statistics.median(values):,.0f} metrics/s")
    finally:
        bulk.BULK_MIN = normal
        await scratch.drop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
