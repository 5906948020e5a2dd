"""A job-queue worker process for the multi-process tests (tests/test_jobs_concurrency.py).

Usage::

    python tests/jobs_worker.py URI NAME OUT drain [--limit N] [--lease SECONDS]
    python tests/jobs_worker.py URI NAME OUT hang [--lease SECONDS]

``drain`` claims jobs named ``drain`` until none is PENDING or RUNNING, finishing each
with the result ``NAME`` and appending its id to OUT as it is claimed; when a claim
comes back empty it runs ``requeue_expired`` (as a real worker's reaper would), so
jobs of dead workers are picked up. ``hang`` claims one job, writes its id to OUT and
then sleeps until it is killed, never finishing it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from asyncstore import AsyncStore
from asyncstore.entities import JobStatus

JOB_NAME = "drain"


async def drain(store: AsyncStore, name: str, out: Path, limit: int, lease: float) -> int:
    """Claim and finish jobs until the queue holds no PENDING or RUNNING job."""
    done = 0
    with out.open("a") as log:
        while True:
            claimed = await store.jobs.claim([JOB_NAME], limit=limit, lease_seconds=lease)
            if not claimed:
                counts = await store.jobs.count_by_status(JOB_NAME)
                if counts[JobStatus.PENDING] == 0 and counts[JobStatus.RUNNING] == 0:
                    return done
                await store.jobs.requeue_expired()
                await asyncio.sleep(0.02)  # others hold the rest: look again shortly
                continue
            log.write("".join(f"{job.job_id}\n" for job in claimed))
            log.flush()
            for job in claimed:
                await store.jobs.finish(job.job_id, name)
                done += 1


async def hang(store: AsyncStore, out: Path, lease: float) -> None:
    """Claim one job, report it, and never finish it."""
    while True:
        claimed = await store.jobs.claim([JOB_NAME], limit=1, lease_seconds=lease)
        if claimed:
            break
        await asyncio.sleep(0.02)
    out.write_text(claimed[0].job_id + "\n")
    await asyncio.sleep(3600)


async def main(argv: list[str]) -> int:
    """Parse the arguments and run one worker."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("uri")
    parser.add_argument("name")
    parser.add_argument("out", type=Path)
    parser.add_argument("mode", choices=["drain", "hang"])
    parser.add_argument("--limit", type=int, default=1)
    parser.add_argument("--lease", type=float, default=30.0)
    args = parser.parse_args(argv)
    async with AsyncStore.open(args.uri, pool_size=2, max_overflow=0) as store:
        if args.mode == "drain":
            done = await drain(store, args.name, args.out, args.limit, args.lease)
            print(f"{args.name} finished {done} jobs")
        else:
            await hang(store, args.out, args.lease)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
