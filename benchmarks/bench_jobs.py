"""Job queue throughput: claim + finish with 1, 4 and 8 concurrent workers per backend.

Three ways of draining the same queue are measured in the same run, on the same
database and pool:

* ``store``: ``store.jobs.claim(limit=1)`` then ``store.jobs.finish`` (the real thing);
* ``naive``: "SELECT the oldest PENDING id, then UPDATE … WHERE id = :id AND status =
  PENDING" in two transactions, through the same unit of work; a claim whose UPDATE
  matched no row was lost to a race with another worker and is counted (``lost``);
* ``raw``: the ceiling: the same claim and finish SQL as ``store`` sent straight
  through the driver (asyncpg, aiomysql, aiosqlite) on a pooled connection, with
  no SQLAlchemy statement building, unit of work or entity mapping.

Run (each backend gets a scratch database, dropped afterwards)::

    .venv/bin/python benchmarks/bench_jobs.py --backends sqlite,postgresql,mysql --scale 500

``jobs_workload(store, scale)`` is the importable workload: an async function that
takes an open store and a job count and returns a dict of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import AsyncStore
from asyncstore.bench.database import create_scratch
from asyncstore.config import Backend
from asyncstore.entities import JobStatus, NewJob
from asyncstore.schema import jobs

WORKER_COUNTS = (1, 4, 8)
SERVERS = {
    "postgresql": os.environ.get("ASYNCSTORE_BENCH_POSTGRESQL_URI", "postgresql://postgres@127.0.0.1:5432/postgres"),
    "mysql": os.environ.get("ASYNCSTORE_BENCH_MYSQL_URI", "mysql://root@127.0.0.1:3306/test"),
}

Drain = Callable[[AsyncStore, str, dict[str, int]], Awaitable[None]]


# --- the three ways to drain --------------------------------------------------------------


async def _store_worker(store: AsyncStore, name: str, stats: dict[str, int]) -> None:
    while claimed := await store.jobs.claim([name], limit=1, lease_seconds=60):
        await store.jobs.finish(claimed[0].job_id, "ok")
        stats["done"] += 1


async def _naive_worker(store: AsyncStore, name: str, stats: dict[str, int]) -> None:
    oldest = (
        select(jobs.c.id)
        .where(jobs.c.job_name == name, jobs.c.status == int(JobStatus.PENDING))
        .order_by(jobs.c.creation_time, jobs.c.id)
        .limit(1)
    )

    async def pick(conn: AsyncConnection) -> str | None:
        return (await conn.execute(oldest)).scalar()

    while (job_id := await store.uow.run(pick, write=False)) is not None:
        take = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status == int(JobStatus.PENDING))
            .values(status=int(JobStatus.RUNNING), last_update_time=int(time.time() * 1000))
        )

        async def claim(conn: AsyncConnection, take: Any = take) -> int:
            return int((await conn.execute(take)).rowcount)

        if await store.uow.run(claim) == 0:
            stats["lost"] += 1  # another worker took it between our SELECT and UPDATE
            continue
        await store.jobs.finish(job_id, "ok")
        stats["done"] += 1


# The ceiling's SQL: the same statements job_sql.claim and finish send, written for
# each driver's parameter style, with the host clock passed in.
_RAW_CLAIM = {
    Backend.POSTGRESQL: (
        "WITH c AS (SELECT id FROM jobs WHERE status = 0 AND next_attempt_at <= $1 AND job_name = $2"
        " ORDER BY next_attempt_at, creation_time, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " UPDATE jobs SET status = 1, lease_expires_at = $1 + 60000, last_update_time = $1"
        " FROM c WHERE jobs.id = c.id RETURNING jobs.id"
    ),
    Backend.MYSQL: (
        "SELECT id FROM jobs WHERE status = 0 AND next_attempt_at <= %s AND job_name = %s"
        " ORDER BY next_attempt_at, creation_time, id LIMIT 1 FOR UPDATE SKIP LOCKED"
    ),
    Backend.SQLITE: (
        "UPDATE jobs SET status = 1, lease_expires_at = ?1 + 60000, last_update_time = ?1"
        " WHERE id IN (SELECT id FROM jobs WHERE status = 0 AND next_attempt_at <= ?1 AND job_name = ?2"
        " ORDER BY next_attempt_at, creation_time, id LIMIT 1) AND status = 0 RETURNING id"
    ),
}
_MYSQL_TAKE = "UPDATE jobs SET status = 1, lease_expires_at = %s + 60000, last_update_time = %s WHERE id = %s"
_FINISH = {
    Backend.POSTGRESQL: (
        "UPDATE jobs SET status = 2, result = $1, lease_expires_at = NULL, last_update_time = $2"
        " WHERE id = $3 AND status = 1"
    ),
    Backend.MYSQL: (
        "UPDATE jobs SET status = 2, result = %s, lease_expires_at = NULL, last_update_time = %s"
        " WHERE id = %s AND status = 1"
    ),
    Backend.SQLITE: (
        "UPDATE jobs SET status = 2, result = ?, lease_expires_at = NULL, last_update_time = ?"
        " WHERE id = ? AND status = 1"
    ),
}


async def _raw_worker(store: AsyncStore, name: str, stats: dict[str, int]) -> None:
    backend = store.backend
    lock = store.uow.state.write_lock  # SQLite: one writer per process, as the store does
    async with store.engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        while True:
            now = int(time.time() * 1000)
            if backend is Backend.POSTGRESQL:
                async with driver.transaction():
                    job_id = await driver.fetchval(_RAW_CLAIM[backend], now, name)
                if job_id is None:
                    return
                async with driver.transaction():
                    await driver.execute(_FINISH[backend], "ok", now, job_id)
            elif backend is Backend.MYSQL:
                async with driver.cursor() as cur:
                    await cur.execute(_RAW_CLAIM[backend], (now, name))
                    row = await cur.fetchone()
                    if row is None:
                        await driver.commit()
                        return
                    await cur.execute(_MYSQL_TAKE, (now, now, row[0]))
                    await driver.commit()
                    await cur.execute(_FINISH[backend], ("ok", now, row[0]))
                    await driver.commit()
            else:
                assert lock is not None
                async with lock:
                    await driver.execute("BEGIN IMMEDIATE")
                    async with driver.execute(_RAW_CLAIM[backend], (now, name)) as cur:
                        row = await cur.fetchone()
                    await driver.execute("COMMIT")
                if row is None:
                    return
                async with lock:
                    await driver.execute("BEGIN IMMEDIATE")
                    await driver.execute(_FINISH[backend], ("ok", now, row[0]))
                    await driver.execute("COMMIT")
            stats["done"] += 1


# --- the workload ---------------------------------------------------------------------------


async def _drain(store: AsyncStore, kind: str, drain: Drain, workers: int, scale: int) -> dict[str, Any]:
    name = f"bench-{kind}-{workers}-{secrets.token_hex(3)}"
    await store.jobs.create_many([NewJob(name, {"i": i}) for i in range(scale)])
    stats = {"done": 0, "lost": 0}
    started = time.perf_counter()
    await asyncio.gather(*(drain(store, name, stats) for _ in range(workers)))
    elapsed = time.perf_counter() - started
    counts = await store.jobs.count_by_status(name)
    if counts[JobStatus.SUCCEEDED] != scale or stats["done"] != scale:
        raise RuntimeError(f"{kind} with {workers} workers finished {stats['done']} of {scale} jobs: {counts}")
    return {
        "way": kind,
        "workers": workers,
        "jobs": scale,
        "seconds": round(elapsed, 3),
        "jobs_per_second": round(scale / elapsed, 1),
        "lost_claims": stats["lost"],
    }


async def jobs_workload(store: AsyncStore, scale: int, workers: tuple[int, ...] = WORKER_COUNTS) -> dict[str, Any]:
    """Drain ``scale`` jobs per (way, worker count) and return the figures.

    Args:
        store: an open store on a scratch database (the jobs it creates stay there).
        scale: jobs drained per measurement.
        workers: the concurrent worker counts to measure.

    Returns:
        ``{"backend": ..., "scale": ..., "results": [{"way", "workers", "jobs",
        "seconds", "jobs_per_second", "lost_claims"}, ...]}``; ``raw_ceiling_ratio`` of
        each ``store`` row is its throughput over the ``raw`` row with as many workers.
    """
    results = []
    for count in workers:
        for kind, drain in (("store", _store_worker), ("naive", _naive_worker), ("raw", _raw_worker)):
            results.append(await _drain(store, kind, drain, count, scale))
    for row in results:
        if row["way"] == "store":
            raw = next(r for r in results if r["way"] == "raw" and r["workers"] == row["workers"])
            row["raw_ceiling_ratio"] = round(row["jobs_per_second"] / raw["jobs_per_second"], 2)
    return {"backend": store.backend.value, "scale": scale, "results": results}


# --- the script -----------------------------------------------------------------------------


def _table(report: list[dict[str, Any]]) -> str:
    header = ("backend", "way", "workers", "jobs", "seconds", "jobs/s", "lost", "vs raw")
    lines = ["{:<11} {:<6} {:>7} {:>6} {:>8} {:>8} {:>5} {:>6}".format(*header)]
    for run in report:
        for row in run["results"]:
            ratio = f"{row['raw_ceiling_ratio']:.2f}" if "raw_ceiling_ratio" in row else ""
            lines.append(
                f"{run['backend']:<11} {row['way']:<6} {row['workers']:>7} {row['jobs']:>6} {row['seconds']:>8.2f} "
                f"{row['jobs_per_second']:>8.1f} {row['lost_claims']:>5} {ratio:>6}"
            )
    return "\n".join(lines)


async def main(argv: list[str]) -> int:
    """Run the workload on each backend named and print a table (and JSON if asked)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite,postgresql,mysql")
    parser.add_argument("--scale", type=int, default=500, help="jobs drained per measurement")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    report = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        scratch = await create_scratch(SERVERS.get(backend), "jobs")
        try:
            async with AsyncStore.open(scratch.uri) as store:
                report.append(await jobs_workload(store, args.scale))
        finally:
            await scratch.drop()
        print(_table(report[-1:]), flush=True)
    print()
    print(_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
