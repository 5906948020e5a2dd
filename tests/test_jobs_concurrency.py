"""Job queue under concurrency, on every backend: no job lost, none handed out twice.

* 8 claimer tasks on one store drain 2,000 jobs;
* 4 worker processes (tests/jobs_worker.py) on the same database drain 2,000 jobs;
* a worker process killed mid-job: its lease expires, the job is requeued and another
  worker process finishes it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from asyncstore import AsyncStore
from asyncstore.entities import JobStatus, NewJob

WORKER = Path(__file__).with_name("jobs_worker.py")
JOBS = 2000
PROCESS_TIMEOUT = 240.0  # seconds; a stuck worker fails the test instead of hanging it


async def _enqueue(store: AsyncStore, count: int) -> list[str]:
    created = await store.jobs.create_many([NewJob("drain", {"i": i}) for i in range(count)])
    return [job.job_id for job in created]


async def _results(store: AsyncStore) -> dict[str, str | None]:
    return {job.job_id: job.result async for job in store.jobs.list("drain")}


async def _spawn(uri: str, name: str, out: Path, mode: str, *options: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), uri, name, str(out), mode, *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def _finish(proc: asyncio.subprocess.Process) -> str:
    stdout, stderr = await asyncio.wait_for(proc.communicate(), PROCESS_TIMEOUT)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    return stdout.decode()


@pytest.mark.slow
async def test_eight_claimer_tasks_drain_every_job_exactly_once(store: AsyncStore) -> None:
    ids = await _enqueue(store, JOBS)
    claims: list[tuple[str, str]] = []

    async def claimer(name: str) -> None:
        while True:
            claimed = await store.jobs.claim(["drain"], limit=1, lease_seconds=60)
            if not claimed:
                if (await store.jobs.count_by_status("drain"))[JobStatus.PENDING] == 0:
                    return
                await asyncio.sleep(0.005)
                continue
            for job in claimed:
                claims.append((job.job_id, name))
                await store.jobs.finish(job.job_id, name)  # a second claim would fail here

    await asyncio.gather(*(claimer(f"task-{n}") for n in range(8)))
    claimed_ids = [job_id for job_id, _ in claims]
    assert len(claimed_ids) == JOBS and set(claimed_ids) == set(ids)
    counts = await store.jobs.count_by_status("drain")
    assert counts[JobStatus.SUCCEEDED] == JOBS and sum(counts.values()) == JOBS
    assert await _results(store) == dict(claims)
    assert len({name for _, name in claims}) > 1


@pytest.mark.slow
async def test_four_worker_processes_drain_every_job_exactly_once(
    store: AsyncStore, migrated_uri: str, tmp_path: Path
) -> None:
    ids = await _enqueue(store, JOBS)
    outs = {f"proc-{n}": tmp_path / f"proc-{n}.ids" for n in range(4)}
    procs = [await _spawn(migrated_uri, name, out, "drain", "--limit", "5") for name, out in outs.items()]
    reports = await asyncio.gather(*(_finish(proc) for proc in procs))
    claimed = {name: out.read_text().split() for name, out in outs.items()}
    every = [job_id for ids_of_one in claimed.values() for job_id in ids_of_one]
    assert len(every) == JOBS and set(every) == set(ids)
    results = await _results(store)
    assert all(results[job_id] == name for name, mine in claimed.items() for job_id in mine)
    counts = await store.jobs.count_by_status("drain")
    assert counts[JobStatus.SUCCEEDED] == JOBS and sum(counts.values()) == JOBS
    assert sum(int(report.split()[2]) for report in reports) == JOBS


@pytest.mark.slow
async def test_killed_workers_job_is_requeued_and_finished_by_another(
    store: AsyncStore, migrated_uri: str, tmp_path: Path
) -> None:
    ids = await _enqueue(store, 5)
    hung_out, rescuer_out = tmp_path / "hung.ids", tmp_path / "rescuer.ids"
    hung = await _spawn(migrated_uri, "hung", hung_out, "hang", "--lease", "1")
    for _ in range(int(PROCESS_TIMEOUT / 0.05)):
        if hung_out.exists() and hung_out.read_text().strip():
            break
        assert hung.returncode is None, (await hung.stderr.read()).decode() if hung.stderr else ""
        await asyncio.sleep(0.05)
    victim = hung_out.read_text().strip()
    assert victim == ids[0]
    hung.kill()  # SIGKILL: no clean-up, the job stays RUNNING with its lease
    await hung.wait()
    orphan = await store.jobs.get(victim)
    assert orphan.status is JobStatus.RUNNING and orphan.lease_expires_at is not None

    rescuer = await _spawn(migrated_uri, "rescuer", rescuer_out, "drain", "--lease", "30")
    assert (await _finish(rescuer)).strip() == "rescuer finished 5 jobs"
    rescued = await store.jobs.get(victim)
    assert rescued.status is JobStatus.SUCCEEDED and rescued.result == "rescuer"
    assert rescued.last_update_time >= orphan.lease_expires_at
    assert sorted(rescuer_out.read_text().split()) == sorted(ids)
    assert rescuer_out.read_text().split()[-1] == victim  # taken only once its lease ran out
