"""Benchmark of store.runs: run creation, log_batch, get_run under concurrency, search.

Usage::

    python benchmarks/bench_runs.py                       # a temporary SQLite file
    python benchmarks/bench_runs.py --uri postgresql://postgres@127.0.0.1:5432/bench --out runs.json
    python benchmarks/bench_runs.py --uri mysql://root@127.0.0.1:3306/bench --scale 2
    python benchmarks/bench_runs.py --uri postgresql://postgres@127.0.0.1:5432/bench --search-scale

Each workload is one async function ``workload(store, scale) -> dict`` so that an
``asyncstore bench`` command can import and run it.

log_batch is compared with a raw-driver ceiling measured in the same run, on the
same database, interleaved batch by batch (so that load from other processes on a
shared machine hits both alike): the bare driver inserts the same 1000 rows into
``metrics_raw`` (the ``metrics`` columns and primary key; no foreign key, no
secondary index), one transaction per batch: asyncpg ``copy_records_to_table`` on
PostgreSQL, ``sqlite3`` ``executemany`` on SQLite, aiomysql ``executemany``
(multi-row INSERT) on MySQL/MariaDB. The store does more per batch (run lock,
duplicate-safe insert, the foreign key and the history index, latest_metrics
upkeep), so the ratio of median batch times says what that costs.

``--search-scale`` adds the issue's search target: 10,000 runs with 20 metrics each
(filled once with bulk inserts and reused), a filter on one metric ordered by
another, pages of 100 and 1000. Figures are printed as a table and written as JSON
with ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, Table, func, insert, select
from sqlalchemy.engine import make_url

from asyncstore import AsyncStore
from asyncstore import schema as s
from asyncstore.bench.raw import METRIC_COLUMNS, RawDriver
from asyncstore.config import Backend
from asyncstore.entities import Metric, Param, RunTag
from asyncstore.errors import NotFound
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


async def search_runs(store: AsyncStore, scale: float = 1.0, analyze: bool = True) -> dict[str, Any]:
    """Search calls per second over 1000 runs (20 metrics, 2 params each); pages of 100.

    With ``analyze`` (the default) PostgreSQL's statistics are refreshed after the
    fill, as autovacuum would on a live database (see :func:`_analyze`).
    """
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
    if analyze:
        await _analyze(store)
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


SCALE_RUNS = 10_000
SCALE_METRICS = 20
SCALE_EXPERIMENT = "bench-search-10k"
"""The issue's search target: 10,000 runs with 20 metrics each (kept between runs of
the script in the database given by --uri, and reused when complete)."""
SCALE_QUERIES = (
    # (label, filter, order_by, page size)
    ("metric filter, order by another metric, page 100", "metrics.m1 < 0.5", ["metrics.m2 DESC"], 100),
    ("metric filter, order by another metric, page 1000", "metrics.m1 < 0.5", ["metrics.m2 DESC"], 1000),
    ("selective metric + param filter, page 100", "metrics.m3 > 0.9 and params.model = 'b'", ["metrics.m4"], 100),
    ("no filter, default order, page 100", "", [], 100),
)


async def _fill_scale(store: AsyncStore, runs_wanted: int) -> str:
    """Create (or reuse) the 10,000-run experiment of :func:`search_scale`.

    The rows are what log_batch would write (a run, its runName tag, 2 params, 20
    metrics with their latest values), inserted with Core executemany in chunks of
    500 runs, because filling through the API would take minutes per backend and is
    not what this workload measures.
    """
    try:
        exp = await store.experiments.get_by_name(SCALE_EXPERIMENT)
        exp_id = exp.experiment_id
        async with store.uow.transaction(write=False) as conn:
            have = (await conn.execute(select(func.count()).select_from(s.runs).where(
                s.runs.c.experiment_id == int(exp_id)))).scalar_one()
        if have == runs_wanted:
            return exp_id
        await store.experiments.rename(exp_id, f"{SCALE_EXPERIMENT}-stale-{uuid.uuid4().hex[:8]}")
    except NotFound:  # first time on this database
        pass
    exp_id = await store.experiments.create(SCALE_EXPERIMENT)
    rng = random.Random(10_000)
    for start in range(0, runs_wanted, 500):
        run_rows, tag_rows, param_rows, metric_rows = [], [], [], []
        for _ in range(min(500, runs_wanted - start)):
            run_id = uuid.uuid4().hex
            run_rows.append({
                "run_uuid": run_id, "name": f"run-{start}", "experiment_id": int(exp_id), "user_id": "bench",
                "status": "FINISHED", "start_time": rng.randrange(10**9), "end_time": None, "deleted_time": None,
                "lifecycle_stage": "active", "artifact_uri": None, "source_type": "UNKNOWN", "source_name": "",
                "entry_point_name": "", "source_version": "",
            })
            tag_rows.append({"run_uuid": run_id, "key": "mlflow.runName", "value": f"run-{start}"})
            param_rows += [{"run_uuid": run_id, "key": "model", "value": rng.choice("abc")},
                           {"run_uuid": run_id, "key": "lr", "value": rng.choice(["0.1", "0.01"])}]
            metric_rows += [{"run_uuid": run_id, "key": f"m{k}", "value": rng.random(), "timestamp": 1, "step": 0,
                             "is_nan": False} for k in range(SCALE_METRICS)]
        async with store.uow.transaction() as conn:
            await conn.execute(insert(s.runs), run_rows)
            await conn.execute(insert(s.tags), tag_rows)
            await conn.execute(insert(s.params), param_rows)
            await conn.execute(insert(s.metrics), metric_rows)
            await conn.execute(insert(s.latest_metrics), metric_rows)
    await _analyze(store)
    return exp_id


async def _analyze(store: AsyncStore) -> None:
    """PostgreSQL: refresh the planner's statistics after a bulk fill.

    Autovacuum does this on a live database within a minute or so; right after a fill
    the planner still believes the tables are (nearly) empty and picks nested loops
    that cost seconds (EXPLAIN ANALYZE showed 1.4 s instead of 6 ms for 1000 runs).
    """
    if store.backend is not Backend.POSTGRESQL:
        return
    async with store.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("runs", "latest_metrics", "metrics", "params", "tags"):
            await conn.exec_driver_sql(f"ANALYZE {table}")


async def search_scale_workload(store: AsyncStore, scale: float = 1.0) -> dict[str, Any]:
    """The issue's target: searches over 10,000 runs x 20 metrics (filter on one metric,
    order by another; pages of 100 and 1000). Median and max latency per query."""
    runs_wanted = max(1000, int(SCALE_RUNS * scale))
    t0 = time.perf_counter()
    exp_id = await _fill_scale(store, runs_wanted)
    fill_s = time.perf_counter() - t0
    repeats = 7
    queries = []
    for label, filter_string, order_by, page in SCALE_QUERIES:
        latencies, found = [], 0
        await store.runs.search([exp_id], filter_string, order_by=order_by, max_results=page)  # warm-up
        for _ in range(repeats):
            t1 = time.perf_counter()
            result = await store.runs.search([exp_id], filter_string, order_by=order_by, max_results=page)
            latencies.append(time.perf_counter() - t1)
            found = len(result)
        queries.append({
            "label": label, "filter": filter_string, "order_by": order_by, "page": page, "rows_returned": found,
            "p50_ms": statistics.median(latencies) * 1000, "max_ms": max(latencies) * 1000,
        })
    return {"runs": runs_wanted, "metrics_per_run": SCALE_METRICS, "fill_seconds": fill_s, "queries": queries}




# --- raw-driver ceiling -----------------------------------------------------------------


def _raw_table() -> Table:
    meta = MetaData()
    columns = [Column(c.name, c.type, nullable=c.nullable) for c in metrics_table.columns]
    return Table(RAW_TABLE, meta, *columns, PrimaryKeyConstraint(*metrics_table.primary_key.columns.keys()),
                 **MYSQL_TABLE_ARGS)


class RawWriter:
    """The bare driver inserting one 1000-row batch per transaction (:class:`RawDriver`)
    into ``metrics_raw``, created on entry and dropped on exit, or into ``metrics``."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store
        self.driver = RawDriver(store.config.uri)
        self.method = self.driver.method

    async def __aenter__(self) -> RawWriter:
        table = _raw_table()
        async with self.store.engine.begin() as conn:
            await conn.run_sync(lambda sync: table.drop(sync, checkfirst=True))
            await conn.run_sync(lambda sync: table.create(sync))
        await self.driver.open()
        return self

    async def write(self, rows: list[tuple[Any, ...]], table: str = RAW_TABLE) -> None:
        """Insert one batch in its own transaction (into ``metrics_raw``, or ``metrics``)."""
        await self.driver.write(table, METRIC_COLUMNS, rows)

    async def __aexit__(self, *exc: object) -> None:
        await self.driver.close()
        table = _raw_table()
        async with self.store.engine.begin() as conn:
            await conn.run_sync(lambda sync: table.drop(sync, checkfirst=True))


async def log_batch_vs_raw(store: AsyncStore, scale: float = 1.0) -> dict[str, Any]:
    """log_batch of 1000 metrics against the bare driver, interleaved batch by batch.

    Each round logs one batch through the store (to one of 4 runs), then inserts the
    same rows with the bare driver, so that load from other processes on a shared
    machine hits all sides alike; ratios are of the median batch times. Two ceilings:
    ``metrics_raw`` (the issue's: bare table, primary key only) and the store's own
    ``metrics`` table for a fresh run (same foreign key, indexes and neighbouring
    rows): the second says what the store's code costs, the first what the table does.
    """
    exp_id = await _experiment(store, "log")
    rounds = max(4, int(30 * scale))
    runs = [await store.runs.create(exp_id) for _ in range(4)]
    fresh = [(await store.runs.create(exp_id)).run_id for _ in range(rounds + 2)]
    store_s: list[float] = []
    raw_s: list[float] = []
    same_s: list[float] = []
    async with RawWriter(store) as raw:
        for i in range(rounds + 2):  # the first two rounds warm every side up
            payload = _metrics(METRIC_BATCH, seed=i)
            rows = [(m.key, m.value, m.timestamp, m.step, False, uuid.uuid4().hex) for m in payload]
            t0 = time.perf_counter()
            await store.runs.log_batch(runs[i % 4].run_id, metrics=payload)
            t1 = time.perf_counter()
            await raw.write(rows)
            t2 = time.perf_counter()
            await raw.write([(*row[:5], fresh[i]) for row in rows], table=metrics_table.name)
            t3 = time.perf_counter()
            if i >= 2:
                store_s.append(t1 - t0)
                raw_s.append(t2 - t1)
                same_s.append(t3 - t2)
    store_med, raw_med, same_med = (statistics.median(x) for x in (store_s, raw_s, same_s))
    return {
        "batches": rounds, "batch_size": METRIC_BATCH, "method": raw.method,
        "store_metrics_per_s": METRIC_BATCH / store_med, "raw_metrics_per_s": METRIC_BATCH / raw_med,
        "raw_same_table_metrics_per_s": METRIC_BATCH / same_med,
        "store_batch_ms_p50": store_med * 1000, "raw_batch_ms_p50": raw_med * 1000,
        "raw_same_table_batch_ms_p50": same_med * 1000,
        "ratio": raw_med / store_med, "ratio_same_table": same_med / store_med,
    }


WORKLOADS = {
    "create_runs": create_runs,
    "log_batch_vs_raw": log_batch_vs_raw,
    "get_run": get_run_concurrent,
    "search_runs": search_runs,
}


# --- command line ---------------------------------------------------------------------------


async def run_all(uri: str, scale: float, search_scale: float | None = None) -> dict[str, Any]:
    """Run every workload on ``uri`` (and :func:`search_scale` when asked); return the figures."""
    results: dict[str, Any] = {}
    async with AsyncStore.open(uri) as store:
        results["backend"] = store.backend.value
        for name, workload in WORKLOADS.items():
            results[name] = await workload(store, scale)
            print(f"  {name}: done", file=sys.stderr)
        if search_scale is not None:
            results["search_scale"] = await search_scale_workload(store, search_scale)
            print("  search_scale: done", file=sys.stderr)
    return results


def print_table(results: dict[str, Any]) -> None:
    """Print the figures of :func:`run_all` as a table."""
    r = results
    rows = [
        ("runs created / s (8 callers)", f"{r['create_runs']['runs_per_s']:.0f}"),
        ("metrics / s, log_batch of 1000 (median batch)", f"{r['log_batch_vs_raw']['store_metrics_per_s']:.0f}"),
        (f"metrics / s, raw ceiling ({r['log_batch_vs_raw']['method']})", f"{r['log_batch_vs_raw']['raw_metrics_per_s']:.0f}"),
        ("log_batch / raw ceiling", f"{r['log_batch_vs_raw']['ratio']:.2f}"),
        ("metrics / s, raw into the store's metrics table", f"{r['log_batch_vs_raw']['raw_same_table_metrics_per_s']:.0f}"),
        ("log_batch / raw into the same table", f"{r['log_batch_vs_raw']['ratio_same_table']:.2f}"),
        ("get_run calls / s (32 tasks)", f"{r['get_run']['calls_per_s']:.0f}"),
        ("get_run p50 / p99 ms", f"{r['get_run']['p50_ms']:.1f} / {r['get_run']['p99_ms']:.1f}"),
        (f"search calls / s ({r['search_runs']['runs']} runs, page {SEARCH_PAGE})", f"{r['search_runs']['calls_per_s']:.1f}"),
        ("search p50 ms", f"{r['search_runs']['p50_ms']:.1f}"),
    ]
    if "search_scale" in r:
        big = r["search_scale"]
        rows.append((f"search over {big['runs']} runs x {big['metrics_per_run']} metrics:", ""))
        rows += [(f"  {q['label']} ({q['rows_returned']} rows), p50 / max ms",
                  f"{q['p50_ms']:.1f} / {q['max_ms']:.1f}") for q in big["queries"]]
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
    parser.add_argument(
        "--search-scale", type=float, nargs="?", const=1.0, default=None, metavar="FACTOR",
        help="also search 10,000 runs x 20 metrics (times FACTOR); the data stays in the database for reuse",
    )
    args = parser.parse_args(argv)
    tmpdir = None
    uri = args.uri
    if uri is None:
        tmpdir = tempfile.mkdtemp(prefix="bench_runs_")
        uri = f"sqlite:///{os.path.join(tmpdir, 'bench.db')}"
    results = asyncio.run(run_all(uri, args.scale, args.search_scale))
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
