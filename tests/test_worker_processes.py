"""``asyncstore worker`` processes on every backend: a mixed queue drained by 4 processes, a stalled
worker's late finish refused, SIGTERM losing nothing.

The handlers are tests/worker_handlers.py; each logs the start and end of every run
with its process id, so the tests can check that no job ever ran twice at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

from asyncstore import AsyncStore
from asyncstore.entities import JobStatus, NewJob
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parent.parent
MAX_RETRIES = 2
DIED = "lease expired: its worker died or hung"


class Workers:
    """Worker processes of one test: started, watched, respawned after a self-kill, stopped."""

    def __init__(self, uri: str, log: Path, *options: str) -> None:
        self.uri, self.log, self.options = uri, log, options
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.deaths: dict[int, float] = {}  # pid -> when its self-kill was seen
        self.stderr: dict[int, str] = {}

    async def start(self, *extra: str) -> asyncio.subprocess.Process:
        env = {
            **os.environ,
            "ASYNCSTORE_TEST_RUN_LOG": str(self.log),
            "ASYNCSTORE_JOB_MAX_RETRIES": str(MAX_RETRIES),
            "ASYNCSTORE_JOB_BACKOFF_BASE": "0.3",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from asyncstore.cli import main; raise SystemExit(main())",
            "worker", "tests.worker_handlers:HANDLERS", "--uri", self.uri, *self.options, *extra,
            cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self.procs[proc.pid] = proc
        return proc

    async def reap(self) -> int:
        """Collect processes that exited by a handler's self-kill (status 17); return how many."""
        dead = 0
        for pid, proc in list(self.procs.items()):
            if proc.returncode is not None:
                assert proc.stderr is not None
                self.stderr[pid] = (await proc.stderr.read()).decode()
                assert proc.returncode == 17, f"worker {pid} exited {proc.returncode}: {self.stderr[pid][-2000:]}"
                self.deaths[pid] = time.time()
                del self.procs[pid]
                dead += 1
        return dead

    async def stop(self, proc: asyncio.subprocess.Process, timeout: float = 60.0) -> str:
        """SIGTERM one worker; it must exit 0. Its stderr."""
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
        text = err.decode()
        assert proc.returncode == 0, text[-3000:]
        self.procs.pop(proc.pid, None)
        self.stderr[proc.pid] = text
        return text

    async def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def _runs(log: Path) -> dict[str, list[dict[str, object]]]:
    """Runs per job from the handlers' log: start, end (or stop) time, pid, attempt."""
    runs: dict[str, list[dict[str, object]]] = defaultdict(list)
    open_runs: dict[tuple[str, int, int], dict[str, object]] = {}
    for line in log.read_text().splitlines():
        event, job_id, pid, at, attempt = line.split()
        key = (job_id, int(pid), int(attempt))
        if event == "start":
            run: dict[str, object] = {"pid": int(pid), "start": float(at), "end": None, "ended": None}
            runs[job_id].append(run)
            open_runs[key] = run
        else:
            open_runs[key]["end"] = float(at)
            open_runs[key]["ended"] = event
    return runs


def _never_twice_at_once(runs: dict[str, list[dict[str, object]]], deaths: dict[int, float]) -> None:
    for job_id, job_runs in runs.items():
        spans = []
        for run in job_runs:
            end = run["end"] if run["end"] is not None else deaths.get(run["pid"])  # type: ignore[call-overload]
            assert end is not None, f"job {job_id}: a run in live process {run['pid']} never ended"
            spans.append((run["start"], end))
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"job {job_id} ran twice at once: {job_runs}"


@pytest.mark.slow
async def test_four_worker_processes_drain_a_mixed_queue_and_every_job_ends_as_it_must(
    store: AsyncStore, migrated_uri: str, tmp_path: Path
) -> None:
    kinds = {"ok": 4_850, "sync_ok": 40, "fail": 60, "slow": 46, "kill": 4}
    specs = [
        NewJob(kind, {"i": i}, timeout=0.3 if kind == "slow" else None)
        for kind, count in kinds.items()
        for i in range(count)
    ]
    random.Random(5).shuffle(specs)  # the poison jobs spread over the queue
    created = await store.jobs.create_many(specs)
    assert len(created) == 5_000
    log = tmp_path / "runs.log"
    workers = Workers(
        migrated_uri, log, "--concurrency", "8", "--lease-seconds", "1.5", "--poll-interval", "0.01",
        "--max-poll-interval", "0.2", "--grace-seconds", "5",
    )
    try:
        for _ in range(4):
            await workers.start()
        deadline = time.monotonic() + 400
        while True:
            counts = await store.jobs.count_by_status()
            if counts[JobStatus.PENDING] == 0 and counts[JobStatus.RUNNING] == 0:
                break
            assert time.monotonic() < deadline, f"not drained: {counts}"
            for _ in range(await workers.reap()):
                await workers.start()  # a supervisor restarts what a poison job killed
            await asyncio.sleep(0.2)
        for proc in list(workers.procs.values()):
            await workers.stop(proc)
    finally:
        await workers.kill_all()

    runs = _runs(log)
    _never_twice_at_once(runs, workers.deaths)
    # Every attempt of a kill job killed a worker (one death may take several kill jobs with it).
    assert len(workers.deaths) >= MAX_RETRIES + 1
    ended = {job.job_id: job async for job in store.jobs.list()}
    assert len(ended) == 5_000 and all(job.status.is_terminal for job in ended.values())
    died_for_good = 0
    for job in created:
        final = ended[job.job_id]
        done_runs = [run for run in runs[job.job_id] if run["ended"] == "end"]
        if final.status is JobStatus.FAILED and (final.result or "").startswith(DIED):
            # Its worker died on every attempt: a poison job, or a job claimed with one each time (its
            # handler may have run, but its result was still waiting for the batched finish).
            assert final.retry_count == MAX_RETRIES and f"no retries left (max_retries {MAX_RETRIES})" in final.result
            assert all(run["pid"] in workers.deaths for run in runs[job.job_id]), runs[job.job_id]
            died_for_good += job.job_name != "kill"
            continue
        assert job.job_name != "kill", f"kill job {job.job_id} ended {final.status}: {final.result}"
        if job.job_name in ("ok", "sync_ok"):
            assert final.status is JobStatus.SUCCEEDED and json.loads(final.result or "") == {"i": job.params["i"]}
            assert done_runs, f"job {job.job_id} SUCCEEDED without a completed run"
        elif job.job_name == "fail":
            assert final.status is JobStatus.FAILED and final.result == "RuntimeError: always fails"
            assert final.retry_count == MAX_RETRIES and len(runs[job.job_id]) <= MAX_RETRIES + 1
        else:
            assert final.status is JobStatus.TIMEOUT and (final.result or "").startswith("timed out: ran longer")
    kill_jobs = [ended[job.job_id] for job in created if job.job_name == "kill"]
    assert all(
        job.result == f"{DIED} 3 times in a row; no retries left (max_retries 2), so it is FAILED" for job in kill_jobs
    ), [job.result for job in kill_jobs]
    assert died_for_good < 100  # the neighbours of poison jobs; most jobs never met one


@pytest.mark.slow
async def test_a_stalled_workers_late_finish_is_refused(store: AsyncStore, migrated_uri: str, tmp_path: Path) -> None:
    job = await store.jobs.create("hold", {"seconds": 1.5})
    log = tmp_path / "runs.log"
    workers = Workers(migrated_uri, log, "--concurrency", "1", "--lease-seconds", "1", "--poll-interval", "0.01",
                      "--max-poll-interval", "0.1", "--queues", "hold")
    try:
        stalled = await workers.start()
        assert await eventually(lambda: _started(log, 1), True, 60)
        stalled.send_signal(signal.SIGSTOP)  # stalls mid-handler, heartbeats and all
        await asyncio.sleep(2.0)  # its 1 s lease runs out
        assert (await store.jobs.requeue_expired(backoff_base=0)).requeued == 1
        taker = await workers.start()
        assert await eventually(lambda: _status(store, job.job_id), JobStatus.SUCCEEDED, 60) is JobStatus.SUCCEEDED
        stalled.send_signal(signal.SIGCONT)
        assert await eventually(lambda: _ended(log, stalled.pid), True, 30)
        await asyncio.sleep(1.0)  # its finish (or heartbeat) is refused meanwhile
        stalled_err = await workers.stop(stalled)
        await workers.stop(taker)
    finally:
        await workers.kill_all()
    done = await store.jobs.get(job.job_id)
    assert done.status is JobStatus.SUCCEEDED and done.result == f"held by {taker.pid}" and done.retry_count == 1
    assert "no longer ours" in stalled_err and ("refused 1" in stalled_err or "lost 1" in stalled_err)
    assert "succeeded 0" in stalled_err


async def _started(log: Path, count: int) -> bool:
    return log.exists() and log.read_text().count("start ") >= count


async def _ended(log: Path, pid: int) -> bool:
    return log.exists() and f" {pid} " in "".join(
        line for line in log.read_text().splitlines(keepends=True) if line.startswith("end ")
    )


async def _status(store: AsyncStore, job_id: str) -> JobStatus:
    return (await store.jobs.get(job_id)).status


@pytest.mark.slow
@pytest.mark.parametrize("grace", ["0.1", "20"])
async def test_sigterm_mid_run_loses_nothing_and_exits_0(
    store: AsyncStore, migrated_uri: str, tmp_path: Path, grace: str
) -> None:
    created = await store.jobs.create_many([NewJob("nap", {"seconds": 1.0}) for _ in range(24)])
    log = tmp_path / "runs.log"
    workers = Workers(migrated_uri, log, "--concurrency", "8", "--poll-interval", "0.01", "--queues", "nap")
    try:
        first = await workers.start("--grace-seconds", grace)
        assert await eventually(lambda: _started(log, 8), True, 60)
        await workers.stop(first)
        after_stop = await store.jobs.count_by_status("nap")
        assert after_stop[JobStatus.RUNNING] == 0  # ended or released, none left to a lease
        if grace == "20":
            assert after_stop[JobStatus.SUCCEEDED] >= 8  # the running ones were let finish
        second = await workers.start("--grace-seconds", "20")
        assert await eventually(lambda: _count(store, "nap", JobStatus.SUCCEEDED), 24, 120) == 24
        await workers.stop(second)
    finally:
        await workers.kill_all()
    for job in created:
        done = await store.jobs.get(job.job_id)
        assert done.status is JobStatus.SUCCEEDED and done.retry_count == 0  # a release is not an attempt
    completed = [line for line in log.read_text().splitlines() if line.startswith("end ")]
    assert len(completed) == 24  # every job completed exactly once


async def _count(store: AsyncStore, name: str, status: JobStatus) -> int:
    return (await store.jobs.count_by_status(name))[status]
