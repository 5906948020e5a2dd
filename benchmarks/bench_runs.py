"""Benchmark of store.runs: run creation, log_batch, get_run under concurrency, search.

Usage::

    python benchmarks/bench_runs.py                       # a temporary SQLite file
    python benchmarks/bench_runs.py --uri postgresql://postgres@127.0.0.1:5432/bench --out runs.json
    python benchmarks/bench_runs.py --uri mysql://root@127.0.0.1:3306/bench --scale 2

Each workload is one async function ``workload(store, scale) -> dict`` so that an
``asyncstore bench`` command can import and run it. The raw-driver ceiling for
metric inserts is measured in the same run, on the same database, into
``metrics_raw`` (the ``metrics`` columns and primary key, no foreign key):
asyncpg ``copy_records_to_table`` on PostgreSQL, ``sqlite3`` ``executemany`` on
SQLite, aiomysql ``executemany`` (multi-row INSERT) on MySQL/MariaDB; one
transaction per 1000-row batch, as log_batch. The store does more per batch (run
lock, duplicate-safe insert, latest_metrics upkeep), so the ratio says what that
costs. Figures are printed as a table and written as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

import aiomysql
import asyncpg
from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, Table
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from asyncstore.config import Backend
from asyncstore.entities import Metric, Param, RunTag
from asyncstore.schema import MYSQL_TABLE_ARGS
from asyncstore.schema import metrics as metrics_table

METRIC_BATCH = 1000
"""Metrics per log_batch call: MLflow's per-batch maximum."""
GET_RUN_CONCURRENCY = 32
SEARCH_RUNS = 1000
"""Runs in the experiment that the search workload searches."""
SEARCH_PAGE = 100
RAW_TABLE = "metrics_raw"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _metrics(n: int, seed: int) -> list[Metric]:
    rng = random.Random(seed)
    return [Metric(f"m{i % 20}", rng.random(), 1_700_000_000_000 + i, i // 20) for i in range(n)]


async def _experiment(store: AsyncStore, label: str) -> str:
    return await store.experiments.create(f"bench-{label}-{uuid.uuid4().hex[:8]}")


async def create_runs(store: AsyncStore, scale: float = 1.0) -> dict[str, Any]:
    """Runs created per second (8 concurrent callers, each run with 2 tags)."""
    exp_id = await _experiment(store, "create")
    total = max(8, int(400 * scale))

    async def worker(count: int) -> None:
        for _ in range(count):
            await store.runs.create(exp_id, tags={"source": "bench"}, user_id="bench")

    start = time.perf_counter()
    await asyncio.gather(*(worker(total // 8) for _ in range(8)))
    seconds = time.perf_counter() - start
    return {"runs": total // 8 * 8, "seconds": seconds, "runs_per_s": total // 8 * 8 / seconds}


async def log_batch_metrics(store: AsyncStore, scale: float = 1.0) -> dict[str, Any]:
    """Metrics per second through log_batch with 1000-metric batches (one caller)."""
    exp_id = await _experiment(store, "log")
    batches = max(2, int(20 * scale))
    runs = [await store.runs.create(exp_id) for _ in range(4)]
    payloads = [_metrics(METRIC_BATCH, seed=i) for i in range(batches)]
    start = time.perf_counter()
    for i, payload in enumerate(payloads):
        await store.runs.log_batch(runs[i % 4].run_id, metrics=payload)
    seconds = time.perf_counter() - start
    total = batches * METRIC_BATCH
    return {"metrics": total, "seconds": seconds, "metrics_per_s": total / seconds}


async def get_run_concurrent(store: AsyncStore, scale: float = 1.0) -> dict[str, Any]:
    """get_run calls per second with 32 concurrent tasks; p50/p99 latency in ms."""
    exp_id = await _experiment(store, "get")
    run = await store.runs.create(exp_id)
    await store.runs.log_batch(
        run.run_id,
        metrics=_metrics(50, seed=1),
        params=[Param(f"p{i}", str(i)) for i in range(20)],
        tags=[RunTag(f"t{i}", "v") for i in range(20)],
    )
    per_task = max(5, int(40 * scale))
    latencies: list[float] = []

    async def worker() -> None:
        for _ in range(per_task):
            t0 = time.perf_counter()
            await store.runs.get(run.run_id)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(GET_RUN_CONCURRENCY)))
    seconds = time.perf_counter() - start
    calls = per_task * GET_RUN_CONCURRENCY
    return {
        "calls": calls, "concurrency": GET_RUN_CONCURRENCY, "seconds": seconds, "calls_per_s": calls / seconds,
        "p50_ms": _percentile(latencies, 0.5) * 1000, "p99_ms": _percentile(latencies, 0.99) * 1000,
    }


async def search_runs(store: AsyncStore, scale: float = 1.0) -> dict[str, Any]:
    """Search calls per second over 1000 runs (20 metrics, 2 params each); pages of 100."""
    exp_id = await _experiment(store, "search")
    rng = random.Random(3)

    async def fill(count: int) -> None:
        for _ in range(count):
            run = await store.runs.create(exp_id, start_time=rng.randrange(1_000_000))
            await store.runs.log_batch(
                run.run_id,
                metrics=[Metric(f"m{k}", rng.random(), 1, 0) for k in range(20)],
                params=[Param("model", rng.choice("abc")), Param("lr", str(rng.choice([0.1, 0.01])))],
            )

    await asyncio.gather(*(fill(SEARCH_RUNS // 8) for _ in range(8)))
    queries = [
        ("metrics.m1 < 0.5 and params.model = 'b'", ["metrics.m2 DESC"]),
        ("", []),
        ("params.lr = '0.1'", ["start_time"]),
    ]
    calls = max(3, int(30 * scale))
    latencies: list[float] = []
    found = 0
    start = time.perf_counter()
    for i in range(calls):
        filter_string, order_by = queries[i % len(queries)]
        t0 = time.perf_counter()
        page = await store.runs.search([exp_id], filter_string, order_by=order_by, max_results=SEARCH_PAGE)
        latencies.append(time.perf_counter() - t0)
        found += len(page)
    seconds = time.perf_counter() - start
    return {
        "runs": SEARCH_RUNS // 8 * 8, "calls": calls, "seconds": seconds, "calls_per_s": calls / seconds,
        "p50_ms": _percentile(latencies, 0.5) * 1000, "rows_returned": found,
    }


WORKLOADS = {
    "create_runs": create_runs,
    "log_batch_metrics": log_batch_metrics,
    "get_run": get_run_concurrent,
    "search_runs": search_runs,
}


# --- raw-driver ceiling -----------------------------------------------------------------


def _raw_table() -> Table:
    meta = MetaData()
    columns = [Column(c.name, c.type, nullable=c.nullable) for c in metrics_table.columns]
    return Table(RAW_TABLE, meta, *columns, PrimaryKeyConstraint(*metrics_table.primary_key.columns.keys()),
                 **MYSQL_TABLE_ARGS)


def _raw_rows(batches: int) -> list[list[tuple[Any, ...]]]:
    run_id = uuid.uuid4().hex
    return [
        [(m.key, m.value, m.timestamp, m.step, False, run_id) for m in _metrics(METRIC_BATCH, seed=i)]
        for i in range(batches)
    ]


async def raw_metric_ceiling(store: AsyncStore, scale: float = 1.0) -> dict[str, Any]:
    """Metrics per second inserted by the bare driver into ``metrics_raw``."""
    table = _raw_table()
    async with store.engine.begin() as conn:
        await conn.run_sync(lambda sync: table.drop(sync, checkfirst=True))
        await conn.run_sync(lambda sync: table.create(sync))
    batches = _raw_rows(max(2, int(20 * scale)))
    url = store.config.url
    cols = "key, value, timestamp, step, is_nan, run_uuid"
    try:
        start = time.perf_counter()
        if store.backend is Backend.POSTGRESQL:
            conn = await asyncpg.connect(host=url.host, port=url.port or 5432, user=url.username,
                                         password=url.password, database=url.database)
            try:
                for rows in batches:
                    async with conn.transaction():
                        await conn.copy_records_to_table(RAW_TABLE, records=rows, columns=cols.split(", "))
            finally:
                await conn.close()
            method = "asyncpg copy_records_to_table"
        elif store.backend is Backend.SQLITE:
            db = sqlite3.connect(url.database or "")
            try:
                db.execute("PRAGMA synchronous=NORMAL")
                for rows in batches:
                    with db:
                        db.executemany(f"INSERT INTO {RAW_TABLE} ({cols}) VALUES (?, ?, ?, ?, ?, ?)", rows)
            finally:
                db.close()
            method = "sqlite3 executemany"
        elif store.backend is Backend.MYSQL:
            conn = await aiomysql.connect(host=url.host or "127.0.0.1", port=url.port or 3306,
                                          user=url.username or "root", password=url.password or "",
                                          db=url.database, charset="utf8mb4")
            try:
                async with conn.cursor() as cur:
                    for rows in batches:
                        await cur.executemany(
                            f"INSERT INTO {RAW_TABLE} (`key`, value, timestamp, step, is_nan, run_uuid) "
                            "VALUES (%s, %s, %s, %s, %s, %s)", rows)
                        await conn.commit()
            finally:
                conn.close()
            method = "aiomysql executemany (multi-row INSERT)"
        else:  # pragma: no cover - exhaustive
            raise AssertionError(store.backend)
        seconds = time.perf_counter() - start
    finally:
        async with store.engine.begin() as conn:
            await conn.run_sync(lambda sync: table.drop(sync, checkfirst=True))
    total = len(batches) * METRIC_BATCH
    return {"metrics": total, "seconds": seconds, "metrics_per_s": total / seconds, "method": method}


# --- command line ---------------------------------------------------------------------------


async def run_all(uri: str, scale: float) -> dict[str, Any]:
    """Run every workload and the raw ceiling on ``uri``; return the figures."""
    results: dict[str, Any] = {}
    async with AsyncStore.open(uri) as store:
        results["backend"] = store.backend.value
        for name, workload in WORKLOADS.items():
            results[name] = await workload(store, scale)
            print(f"  {name}: done", file=sys.stderr)
        results["raw_metric_ceiling"] = await raw_metric_ceiling(store, scale)
    store_rate = results["log_batch_metrics"]["metrics_per_s"]
    results["log_batch_vs_raw"] = store_rate / results["raw_metric_ceiling"]["metrics_per_s"]
    return results


def print_table(results: dict[str, Any]) -> None:
    """Print the figures of :func:`run_all` as a table."""
    r = results
    rows = [
        ("runs created / s (8 callers)", f"{r['create_runs']['runs_per_s']:.0f}"),
        ("metrics / s, log_batch of 1000", f"{r['log_batch_metrics']['metrics_per_s']:.0f}"),
        (f"metrics / s, raw ceiling ({r['raw_metric_ceiling']['method']})", f"{r['raw_metric_ceiling']['metrics_per_s']:.0f}"),
        ("log_batch / raw ceiling", f"{r['log_batch_vs_raw']:.2f}"),
        ("get_run calls / s (32 tasks)", f"{r['get_run']['calls_per_s']:.0f}"),
        ("get_run p50 / p99 ms", f"{r['get_run']['p50_ms']:.1f} / {r['get_run']['p99_ms']:.1f}"),
        (f"search calls / s ({r['search_runs']['runs']} runs, page {SEARCH_PAGE})", f"{r['search_runs']['calls_per_s']:.1f}"),
        ("search p50 ms", f"{r['search_runs']['p50_ms']:.1f}"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"backend: {r['backend']}")
    for label, value in rows:
        print(f"  {label:<{width}}  {value:>12}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", help="database URI (default: a temporary SQLite file)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's size (default 1)")
    parser.add_argument("--out", help="write the figures as JSON to this file")
    args = parser.parse_args(argv)
    tmpdir = None
    uri = args.uri
    if uri is None:
        tmpdir = tempfile.mkdtemp(prefix="bench_runs_")
        uri = f"sqlite:///{os.path.join(tmpdir, 'bench.db')}"
    results = asyncio.run(run_all(uri, args.scale))
    results["uri"] = make_url(uri).render_as_string(hide_password=True)
    results["scale"] = args.scale
    print_table(results)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)
    if tmpdir is not None:
        for name in os.listdir(tmpdir):
            os.remove(os.path.join(tmpdir, name))
        os.rmdir(tmpdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
