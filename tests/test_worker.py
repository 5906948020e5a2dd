"""The worker runtime in one process, on every backend: handlers, results, retries, timeouts, stops, lost leases."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from asyncstore import AsyncStore, InvalidParameter
from asyncstore.entities import JobStatus, NewJob
from asyncstore.worker import JobContext, Worker
from tests.helpers import eventually

QUICK = {"poll_interval": 0.01, "max_poll_interval": 0.05, "backoff_base": 0.0, "backoff_jitter": 0.0}


async def _until_done(store: AsyncStore, names: list[str], timeout: float = 60.0) -> dict[JobStatus, int]:
    """Wait until no job of ``names`` is PENDING or RUNNING; return the counts by status."""

    async def counts() -> dict[JobStatus, int]:
        total: dict[JobStatus, int] = dict.fromkeys(JobStatus, 0)
        for name in names:
            for status, n in (await store.jobs.count_by_status(name)).items():
                total[status] += n
        return total

    async def settled() -> bool:
        now = await counts()
        return now[JobStatus.PENDING] == 0 and now[JobStatus.RUNNING] == 0

    assert await eventually(settled, True, timeout), f"jobs still open: {await counts()}"
    return await counts()


async def test_handlers_run_and_their_results_are_stored(store: AsyncStore) -> None:
    seen: list[tuple[str, int, int]] = []

    async def add(params: dict[str, Any], ctx: JobContext) -> Any:
        seen.append((ctx.job_id, ctx.attempt, ctx.lease_token))
        return {"sum": params["a"] + params["b"]}

    def shout(params: dict[str, Any], ctx: JobContext) -> str:
        assert threading.current_thread() is not threading.main_thread()  # plain functions run in threads
        return params["word"].upper()

    jobs = await store.jobs.create_many(
        [NewJob("add", {"a": i, "b": 1}) for i in range(30)] + [NewJob("shout", {"word": f"w{i}"}) for i in range(5)]
    )
    worker = Worker(store, {"add": add, "shout": shout}, concurrency=4, **QUICK)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    counts = await _until_done(store, ["add", "shout"])
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert counts[JobStatus.SUCCEEDED] == 35 and worker.counts["succeeded"] == 35
    for job in jobs:
        done = await store.jobs.get(job.job_id)
        expected = f'{{"sum": {job.params["a"] + 1}}}' if job.job_name == "add" else job.params["word"].upper()
        assert done.status is JobStatus.SUCCEEDED and done.result == expected
    assert sorted(job_id for job_id, _, _ in seen) == sorted(j.job_id for j in jobs if j.job_name == "add")
    assert {attempt for _, attempt, _ in seen} == {1}


async def test_a_failing_handler_is_retried_then_failed_with_its_error(store: AsyncStore) -> None:
    attempts: list[int] = []

    async def flaky(params: dict[str, Any], ctx: JobContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < params["succeed_on"]:
            raise RuntimeError(f"attempt {ctx.attempt} broke")
        return "made it"

    lucky = await store.jobs.create("flaky", {"succeed_on": 2})
    doomed = await store.jobs.create("flaky", {"succeed_on": 99})
    worker = Worker(store, {"flaky": flaky}, max_retries=2, **QUICK)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await _until_done(store, ["flaky"])
    worker.stop()
    await asyncio.wait_for(task, 30)
    ok = await store.jobs.get(lucky.job_id)
    assert ok.status is JobStatus.SUCCEEDED and ok.result == "made it" and ok.retry_count == 1
    failed = await store.jobs.get(doomed.job_id)
    assert failed.status is JobStatus.FAILED and failed.retry_count == 2
    assert failed.result == "RuntimeError: attempt 3 broke"
    assert sorted(attempts) == [1, 1, 2, 2, 3]
    assert (worker.counts["succeeded"], worker.counts["retried"], worker.counts["failed"]) == (1, 3, 1)


async def test_a_handler_that_overruns_its_timeout_is_cancelled_and_timed_out(store: AsyncStore) -> None:
    cancelled = asyncio.Event()
    flags: list[threading.Event] = []

    async def slow(params: dict[str, Any], ctx: JobContext) -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    def slow_sync(params: dict[str, Any], ctx: JobContext) -> str:
        flags.append(ctx.cancelled)
        ctx.cancelled.wait(10)  # a well-behaved plain function returns when told
        return "late"

    a = await store.jobs.create("slow", {}, timeout=0.3)
    b = await store.jobs.create("slow_sync", {}, timeout=0.3)
    worker = Worker(store, {"slow": slow, "slow_sync": slow_sync}, **QUICK)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await _until_done(store, ["slow", "slow_sync"])
    worker.stop()
    await asyncio.wait_for(task, 30)
    for job in (a, b):
        ended = await store.jobs.get(job.job_id)
        assert ended.status is JobStatus.TIMEOUT
        assert ended.result == "timed out: ran longer than its timeout of 0.3 s"
    assert cancelled.is_set() and flags and flags[0].is_set()
    assert worker.counts["timed_out"] == 2


async def test_stop_lets_running_handlers_end_within_the_grace_period(store: AsyncStore) -> None:
    started = asyncio.Event()

    async def nap(params: dict[str, Any], ctx: JobContext) -> str:
        started.set()
        await asyncio.sleep(params["seconds"])
        return "rested"

    job = await store.jobs.create("nap", {"seconds": 0.5})
    worker = Worker(store, {"nap": nap}, grace_seconds=10, **QUICK)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 30)
    worker.stop()
    await asyncio.wait_for(task, 30)
    done = await store.jobs.get(job.job_id)
    assert done.status is JobStatus.SUCCEEDED and done.result == "rested"


async def test_stop_releases_what_outlives_the_grace_period_without_counting_an_attempt(store: AsyncStore) -> None:
    started = asyncio.Event()

    async def forever(params: dict[str, Any], ctx: JobContext) -> str:
        started.set()
        await asyncio.sleep(3600)
        return "never"

    jobs = await store.jobs.create_many([NewJob("forever", {}) for _ in range(3)])
    worker = Worker(store, {"forever": forever}, concurrency=3, grace_seconds=0.2, **QUICK)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 30)
    assert await eventually(lambda: _running(store, "forever", 3), True)
    began = time.monotonic()
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert time.monotonic() - began < 10
    for job in jobs:
        back = await store.jobs.get(job.job_id)
        assert back.status is JobStatus.PENDING and back.retry_count == 0 and back.lease_expires_at is None
    assert worker.counts["released"] == 3


async def _running(store: AsyncStore, name: str, count: int) -> bool:
    return (await store.jobs.count_by_status(name))[JobStatus.RUNNING] == count


async def test_stop_now_leaves_held_jobs_to_their_leases(store: AsyncStore) -> None:
    async def forever(params: dict[str, Any], ctx: JobContext) -> str:
        await asyncio.sleep(3600)
        return "never"

    job = await store.jobs.create("forever", {})
    worker = Worker(store, {"forever": forever}, grace_seconds=60, **QUICK)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    assert await eventually(lambda: _running(store, "forever", 1), True)
    worker.stop(now=True)
    await asyncio.wait_for(task, 10)
    assert (await store.jobs.get(job.job_id)).status is JobStatus.RUNNING  # its lease will bring it back


async def test_a_job_canceled_while_it_runs_has_its_handler_stopped(store: AsyncStore) -> None:
    stopped = asyncio.Event()

    async def forever(params: dict[str, Any], ctx: JobContext) -> str:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return "never"

    job = await store.jobs.create("forever", {})
    worker = Worker(store, {"forever": forever}, lease_seconds=0.3, **QUICK)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    assert await eventually(lambda: _running(store, "forever", 1), True)
    await store.jobs.cancel(job.job_id)
    await asyncio.wait_for(stopped.wait(), 10)  # the next heartbeat found it no longer held
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert (await store.jobs.get(job.job_id)).status is JobStatus.CANCELED
    assert worker.counts["lost"] == 1


async def test_an_unstorable_result_fails_the_job_saying_why(store: AsyncStore) -> None:
    async def odd(params: dict[str, Any], ctx: JobContext) -> Any:
        return {1, 2}

    job = await store.jobs.create("odd", {})
    worker = Worker(store, {"odd": odd}, **QUICK)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await _until_done(store, ["odd"])
    worker.stop()
    await asyncio.wait_for(task, 30)
    failed = await store.jobs.get(job.job_id)
    assert failed.status is JobStatus.FAILED
    assert failed.result is not None and failed.result.startswith("the handler's result cannot be stored")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"handlers": {}}, "non-empty dict"),
        ({"handlers": {"a": 1}}, "not a function"),
        ({"handlers": {"": lambda p, c: None}}, "not valid"),
        ({"queues": ["b"]}, r"queues \['b'\] have no handler"),
        ({"concurrency": 0}, "concurrency 0"),
        ({"lease_seconds": -1}, "lease_seconds -1"),
        ({"poll_interval": 2.0, "max_poll_interval": 1.0}, "longer than max_poll_interval"),
        ({"grace_seconds": -1}, "grace_seconds -1"),
    ],
)
async def test_bad_worker_settings_are_invalid_parameters(
    store: AsyncStore, kwargs: dict[str, Any], message: str
) -> None:
    settings: dict[str, Any] = {"handlers": {"a": lambda p, c: None}, **kwargs}
    handlers = settings.pop("handlers")
    with pytest.raises(InvalidParameter, match=message):
        Worker(store, handlers, **settings)


async def test_an_idle_worker_wakes_for_a_new_job(store: AsyncStore) -> None:
    """PostgreSQL: NOTIFY wakes it long before its 30-second poll; elsewhere it polls (max 0.05 s here)."""
    started: list[float] = []

    async def mark(params: dict[str, Any], ctx: JobContext) -> str:
        started.append(time.monotonic())
        return "ok"

    slow_poll = store.backend.value == "postgresql"
    worker = Worker(
        store, {"mark": mark}, poll_interval=0.01, max_poll_interval=30.0 if slow_poll else 0.05  # type: ignore[arg-type]
    )
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(1.0)  # idle long enough for the poll interval to back off
    created = time.monotonic()
    await store.jobs.create("mark", {})
    assert await eventually(lambda: _succeeded(store, "mark"), True, 10)
    worker.stop()
    await asyncio.wait_for(task, 30)
    assert started and started[0] - created < 5.0


async def _succeeded(store: AsyncStore, name: str) -> bool:
    return (await store.jobs.count_by_status(name))[JobStatus.SUCCEEDED] == 1


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "is not MODULE:OBJECT"),
        ("tests.no_such_module:HANDLERS", "cannot import module 'tests.no_such_module'"),
        ("tests.worker_handlers:MISSING", "has no 'MISSING'"),
        ("tests.worker_handlers:ok", "is function; expected a dict of job name -> handler"),
    ],
)
def test_worker_command_names_a_bad_target(target: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from asyncstore import cli

    assert cli.main(["worker", target, "--uri", "sqlite:///unused.db"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--concurrency=0", "--lease-seconds=-1", "--grace-seconds=x"])
def test_worker_command_refuses_bad_option_values(option: str, capsys: pytest.CaptureFixture[str]) -> None:
    from asyncstore import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["worker", "tests.worker_handlers:HANDLERS", option])
    assert exited.value.code == 2 and option.split("=")[0] in capsys.readouterr().err
