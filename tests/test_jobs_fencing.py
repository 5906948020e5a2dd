"""Job queue: fenced leases, expired leases as attempts (poison jobs), release, batched heartbeats and finishes."""

from __future__ import annotations

import asyncio

import pytest

from asyncstore import AsyncStore, InvalidParameter, InvalidState, NotFound
from asyncstore.entities import FinishedJob, Job, JobStatus, NewJob

PENDING, RUNNING = JobStatus.PENDING, JobStatus.RUNNING


async def _expire(store: AsyncStore, job: Job, **policy: object) -> None:
    """Let ``job``'s short lease run out and sweep it (as a dead worker's job is)."""
    while True:
        await asyncio.sleep(0.06)
        swept = await store.jobs.requeue_expired(backoff_base=0, **policy)  # type: ignore[arg-type]
        if swept.requeued or swept.failed:
            return


async def test_every_claim_gets_a_new_greater_token(store: AsyncStore) -> None:
    job = await store.jobs.create("t", {})
    tokens = []
    for _ in range(5):  # claims, expiries and re-claims within the same milliseconds
        [claimed] = await store.jobs.claim(["t"], lease_seconds=0.001)
        assert claimed.lease_token == claimed.last_update_time
        tokens.append(claimed.lease_token)
        await _expire(store, claimed, max_retries=100)
    assert tokens == sorted(set(tokens)) and len(tokens) == 5
    assert (await store.jobs.get(job.job_id)).lease_token is None  # PENDING: no claim, no token


async def test_a_stalled_workers_late_calls_are_refused_after_a_reclaim(store: AsyncStore) -> None:
    await store.jobs.create("t", {})
    [stale] = await store.jobs.claim(["t"], lease_seconds=0.05)
    await _expire(store, stale)
    [fresh] = await store.jobs.claim(["t"], lease_seconds=60)
    assert fresh.job_id == stale.job_id and fresh.lease_token != stale.lease_token
    stale_calls = {
        "finish": store.jobs.finish(stale.job_id, "late", token=stale.lease_token),
        "fail": store.jobs.fail(stale.job_id, "late", token=stale.lease_token),
        "heartbeat": store.jobs.heartbeat(stale.job_id, token=stale.lease_token),
        "retry_or_fail": store.jobs.retry_or_fail(stale.job_id, "late", token=stale.lease_token),
        "mark_timed_out": store.jobs.mark_timed_out(stale.job_id, token=stale.lease_token),
        "release": store.jobs.release(stale.job_id, token=stale.lease_token),
    }
    for op, call in stale_calls.items():
        with pytest.raises(InvalidState, match=f"cannot {op} job .*claimed again since lease token {stale.lease_token}"):
            await call
    assert await store.jobs.finish_many([FinishedJob(stale.job_id, "late", stale.lease_token)]) == [stale.job_id]
    assert await store.jobs.heartbeat_many({stale.job_id: stale.lease_token}) == set()  # type: ignore[dict-item]
    assert await store.jobs.get(stale.job_id) == fresh  # untouched
    # The current claimer's calls apply; an operator's call without a token applies too.
    beat = await store.jobs.heartbeat(fresh.job_id, lease_seconds=120, token=fresh.lease_token)
    assert beat.lease_token == fresh.lease_token
    done = await store.jobs.finish(fresh.job_id, "ok", token=fresh.lease_token)
    assert done.status is JobStatus.SUCCEEDED and done.result == "ok"


async def test_a_finished_jobs_token_is_refused_naming_its_state(store: AsyncStore) -> None:
    await store.jobs.create("t", {})
    [job] = await store.jobs.claim(["t"])
    await store.jobs.cancel(job.job_id)
    with pytest.raises(InvalidState, match="it is CANCELED; finish applies only to a RUNNING job"):
        await store.jobs.finish(job.job_id, "late", token=job.lease_token)


async def test_bad_tokens_are_invalid_parameters(store: AsyncStore) -> None:
    await store.jobs.create("t", {})
    [job] = await store.jobs.claim(["t"])
    for bad in (-1, "1", 1.5, True):
        with pytest.raises(InvalidParameter, match="lease token .* is not valid"):
            await store.jobs.finish(job.job_id, "x", token=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter, match="lease token of job .* is None"):
        await store.jobs.heartbeat_many({job.job_id: None})  # type: ignore[dict-item]
    assert (await store.jobs.get(job.job_id)).status is RUNNING


async def test_an_expired_lease_is_an_attempt_and_a_poison_job_ends_failed(store: AsyncStore) -> None:
    poison = await store.jobs.create("poison", {})
    for attempt in range(1, 4):  # max_retries=2: three attempts, each killing its worker
        [claimed] = await store.jobs.claim(["poison"], lease_seconds=0.05)
        await _expire(store, claimed, max_retries=2)
        after = await store.jobs.get(poison.job_id)
        if attempt < 3:
            assert after.status is PENDING and after.retry_count == attempt
            assert after.result == f"lease expired: its worker died or hung {attempt} time{'s' if attempt > 1 else ''} in a row"
    failed = await store.jobs.get(poison.job_id)
    assert failed.status is JobStatus.FAILED and failed.retry_count == 2
    assert failed.result == (
        "lease expired: its worker died or hung 3 times in a row; no retries left (max_retries 2), so it is FAILED"
    )
    assert await store.jobs.claim(["poison"]) == []


async def test_an_expired_lease_waits_out_the_backoff(store: AsyncStore) -> None:
    await store.jobs.create("slow", {})
    [claimed] = await store.jobs.claim(["slow"], lease_seconds=0.05)
    await asyncio.sleep(0.1)
    assert (await store.jobs.requeue_expired(backoff_base=30, backoff_jitter=0)).requeued == 1
    waiting = await store.jobs.get(claimed.job_id)
    assert waiting.next_attempt_at == waiting.last_update_time + 30_000
    assert await store.jobs.claim(["slow"]) == []


async def test_a_handler_failure_resets_the_count_of_deaths_in_a_row(store: AsyncStore) -> None:
    await store.jobs.create("mixed", {})
    [claimed] = await store.jobs.claim(["mixed"], lease_seconds=0.05)
    await _expire(store, claimed, max_retries=5)
    [claimed] = await store.jobs.claim(["mixed"], lease_seconds=60)
    await store.jobs.retry_or_fail(claimed.job_id, "boom", max_retries=5, backoff_base=0, token=claimed.lease_token)
    [claimed] = await store.jobs.claim(["mixed"], lease_seconds=0.05)
    await _expire(store, claimed, max_retries=5)
    again = await store.jobs.get(claimed.job_id)
    assert again.retry_count == 3 and again.result == "lease expired: its worker died or hung 1 time in a row"


async def test_release_hands_a_job_back_without_counting_an_attempt(store: AsyncStore) -> None:
    first, second = await store.jobs.create_many([NewJob("r", {"i": 1}), NewJob("r", {"i": 2})])
    [claimed] = await store.jobs.claim(["r"])
    assert claimed.job_id == first.job_id
    released = await store.jobs.release(claimed.job_id, token=claimed.lease_token)
    assert released.status is PENDING and released.retry_count == 0 and released.lease_expires_at is None
    assert released.next_attempt_at == first.next_attempt_at  # keeps its place in the queue
    assert [j.job_id for j in await store.jobs.claim(["r"], limit=2)] == [first.job_id, second.job_id]
    with pytest.raises(InvalidState, match="it is PENDING; release applies only to a RUNNING job"):
        await store.jobs.release((await store.jobs.create("r", {})).job_id)
    with pytest.raises(NotFound):
        await store.jobs.release("no-such-job")


async def test_finish_many_finishes_held_jobs_and_names_the_rest(store: AsyncStore) -> None:
    await store.jobs.create_many([NewJob("f", {"i": i}) for i in range(600)])  # more than one statement's 500
    claimed = await store.jobs.claim(["f"], limit=600)
    canceled = claimed[7]
    await store.jobs.cancel(canceled.job_id)
    items = [FinishedJob(j.job_id, f"result {j.params['i']}", j.lease_token) for j in claimed]
    items.append(FinishedJob("no-such-job", "x"))
    assert await store.jobs.finish_many(items) == [canceled.job_id, "no-such-job"]
    for job in claimed[:3] + claimed[-3:]:
        done = await store.jobs.get(job.job_id)
        assert done.status is JobStatus.SUCCEEDED and done.result == f"result {job.params['i']}"
    counts = await store.jobs.count_by_status("f")
    assert (counts[JobStatus.SUCCEEDED], counts[JobStatus.CANCELED]) == (599, 1)
    # One result for all is one value; no token finishes under any claim.
    more = await store.jobs.create_many([NewJob("g", {}), NewJob("g", {})])
    await store.jobs.claim(["g"], limit=2)
    assert await store.jobs.finish_many([FinishedJob(j.job_id, "same") for j in more]) == []
    assert {(await store.jobs.get(j.job_id)).result for j in more} == {"same"}
    assert await store.jobs.finish_many([]) == []


async def test_finish_many_checks_everything_before_writing(store: AsyncStore) -> None:
    await store.jobs.create_many([NewJob("f", {}), NewJob("f", {})])
    a, b = await store.jobs.claim(["f"], limit=2)
    bad_batches = {
        "given twice": [FinishedJob(a.job_id, "x"), FinishedJob(a.job_id, "y")],
        "result must be a string": [FinishedJob(a.job_id, "x"), FinishedJob(b.job_id, 1)],  # type: ignore[arg-type]
        "takes FinishedJob items": [FinishedJob(a.job_id, "x"), (b.job_id, "x")],
        "lease token": [FinishedJob(a.job_id, "x", token=-5)],
    }
    for message, batch in bad_batches.items():
        with pytest.raises(InvalidParameter, match=message):
            await store.jobs.finish_many(batch)  # type: ignore[arg-type]
    assert [(await store.jobs.get(j.job_id)).status for j in (a, b)] == [RUNNING, RUNNING]


async def test_heartbeat_many_extends_held_leases_and_reports_lost_ones(store: AsyncStore) -> None:
    await store.jobs.create_many([NewJob("h", {"i": i}) for i in range(4)])
    claimed = await store.jobs.claim(["h"], limit=4, lease_seconds=5)
    await store.jobs.cancel(claimed[1].job_id)
    leases = {j.job_id: j.lease_token for j in claimed}
    held = await store.jobs.heartbeat_many(leases, lease_seconds=600)  # type: ignore[arg-type]
    assert held == {claimed[0].job_id, claimed[2].job_id, claimed[3].job_id}
    beat = await store.jobs.get(claimed[0].job_id)
    assert beat.lease_expires_at is not None and beat.lease_expires_at >= claimed[0].last_update_time + 600_000
    assert beat.lease_token == claimed[0].lease_token  # a heartbeat never moves the token
    assert await store.jobs.heartbeat_many({}) == set()
