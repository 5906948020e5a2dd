"""Job queue: create, get, every transition and every error case, on every backend."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from asyncstore import AsyncStore, InvalidParameter, InvalidState, NotFound
from asyncstore.entities import Job, JobStatus, NewJob

PENDING, RUNNING = JobStatus.PENDING, JobStatus.RUNNING


async def _running(store: AsyncStore, name: str = "work", **params: object) -> Job:
    job = await store.jobs.create(name, dict(params))
    return await store.jobs.start(job.job_id, lease_seconds=60)


def test_status_integers_are_mlflow_s_and_fixed() -> None:
    assert {s.name: int(s) for s in JobStatus} == {
        "PENDING": 0, "RUNNING": 1, "SUCCEEDED": 2, "FAILED": 3, "TIMEOUT": 4, "CANCELED": 5,
        "NEEDS_RECOVERY": 6,
    }
    from mlflow.entities._job_status import JobStatus as MlflowJobStatus

    assert {s.name: int(s) for s in JobStatus} == {s.name: s.to_int() for s in MlflowJobStatus}
    assert [s for s in JobStatus if s.is_terminal] == [
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELED,
    ]
    assert str(JobStatus.TIMEOUT) == "TIMEOUT"


async def test_create_and_get_round_trip(store: AsyncStore) -> None:
    params = {"lr": 0.1, "layers": [1, 2], "name": "é😀", "flag": True, "none": None, "nested": {"a": 1}}
    job = await store.jobs.create("train", params, timeout=2.5)
    assert job.status is PENDING and job.retry_count == 0 and job.result is None
    assert job.creation_time == job.last_update_time == job.next_attempt_at > 1_600_000_000_000
    assert job.lease_expires_at is None
    assert str(uuid.UUID(job.job_id)) == job.job_id
    fetched = await store.jobs.get(job.job_id)
    assert fetched == job
    assert fetched.params == params and fetched.timeout == 2.5


async def test_get_missing_is_not_found(store: AsyncStore) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(NotFound, match=missing):
        await store.jobs.get(missing)


async def test_create_many_is_one_batch_in_order(store: AsyncStore) -> None:
    specs = [NewJob("batch", {"i": i}, timeout=None if i % 2 else 1.0) for i in range(1203)]
    created = await store.jobs.create_many(specs)
    assert [j.params["i"] for j in created] == list(range(1203))
    assert len({j.creation_time for j in created}) == 1
    assert [j.job_id for j in created] == sorted(j.job_id for j in created)
    listed = [job async for job in store.jobs.list("batch")]
    assert [j.params["i"] for j in listed] == list(range(1203))
    assert [j.timeout for j in listed[:2]] == [1.0, None]
    claimed = await store.jobs.claim(["batch"], limit=3)
    assert [j.params["i"] for j in claimed] == [0, 1, 2]
    assert await store.jobs.create_many([]) == []


async def test_create_many_is_all_or_nothing(store: AsyncStore) -> None:
    with pytest.raises(InvalidParameter, match="JSON-serialisable"):
        await store.jobs.create_many([NewJob("ok", {"a": 1}), NewJob("bad", {"a": object()})])
    with pytest.raises(InvalidParameter, match="NewJob"):
        await store.jobs.create_many([("name", {})])  # type: ignore[list-item]
    assert sum((await store.jobs.count_by_status()).values()) == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("", {}), "non-blank"),
        (("x" * 501, {}), "limit is 500"),
        ((None, {}), "non-blank"),
        (("n", ["a"]), "must be a dict"),
        (("n", {1: "a"}), "keys must be strings"),
        (("n", {"a": {1, 2}}), "JSON-serialisable"),
        (("n", {"a": float("nan")}), "NaN"),
        (("n", {"a": "x" * 70_000}), "limit is 65535"),
        (("n", {}, 0), "timeout 0"),
        (("n", {}, -1.0), "timeout"),
        (("n", {}, float("inf")), "finite"),
        (("n", {}, 10**400), "finite"),  # an int beyond every double
        (("n", {}, True), "timeout True"),
    ],
)
async def test_create_rejects_bad_input_before_writing(store: AsyncStore, args: tuple, match: str) -> None:
    with pytest.raises(InvalidParameter, match=match):
        await store.jobs.create(*args)
    assert sum((await store.jobs.count_by_status()).values()) == 0


async def test_start_moves_pending_to_running(store: AsyncStore) -> None:
    job = await store.jobs.create("work", {})
    started = await store.jobs.start(job.job_id)
    assert started.status is RUNNING and started.lease_expires_at is None
    assert started.last_update_time >= job.last_update_time
    leased = await store.jobs.start((await store.jobs.create("work", {})).job_id, lease_seconds=30)
    assert leased.lease_expires_at == leased.last_update_time + 30_000
    with pytest.raises(InvalidState, match="it is RUNNING; start applies only to a PENDING job"):
        await store.jobs.start(job.job_id)
    with pytest.raises(NotFound, match="does not exist"):
        await store.jobs.start(str(uuid.uuid4()))


async def test_finish_fail_and_mark_timed_out(store: AsyncStore) -> None:
    done = await store.jobs.finish((await _running(store)).job_id, json.dumps({"acc": 0.9}))
    assert done.status is JobStatus.SUCCEEDED and json.loads(done.result or "") == {"acc": 0.9}
    assert done.lease_expires_at is None
    failed = await store.jobs.fail((await _running(store)).job_id, "boom")
    assert failed.status is JobStatus.FAILED and failed.result == "boom"
    timed = await store.jobs.mark_timed_out((await _running(store)).job_id)
    assert timed.status is JobStatus.TIMEOUT
    assert (await store.jobs.get(timed.job_id)).status is JobStatus.TIMEOUT


@pytest.mark.parametrize("op", ["finish", "fail", "mark_timed_out", "heartbeat"])
async def test_running_only_transitions_refuse_other_states(store: AsyncStore, op: str) -> None:
    pending = await store.jobs.create("work", {})
    finished = await store.jobs.finish((await _running(store)).job_id, "first")
    call = {
        "finish": lambda jid: store.jobs.finish(jid, "second"),
        "fail": lambda jid: store.jobs.fail(jid, "late"),
        "mark_timed_out": store.jobs.mark_timed_out,
        "heartbeat": store.jobs.heartbeat,
    }[op]
    with pytest.raises(InvalidState, match=f"it is PENDING; {op} applies only to a RUNNING job"):
        await call(pending.job_id)
    with pytest.raises(InvalidState, match="it is SUCCEEDED"):
        await call(finished.job_id)
    with pytest.raises(NotFound):
        await call(str(uuid.uuid4()))
    # A refused transition changed nothing.
    assert await store.jobs.get(finished.job_id) == finished
    assert await store.jobs.get(pending.job_id) == pending


async def test_cancel_pending_and_running_only(store: AsyncStore) -> None:
    pending = await store.jobs.create("work", {})
    assert (await store.jobs.cancel(pending.job_id)).status is JobStatus.CANCELED
    running = await _running(store)
    canceled = await store.jobs.cancel(running.job_id)
    assert canceled.status is JobStatus.CANCELED and canceled.lease_expires_at is None
    with pytest.raises(InvalidState, match="it is CANCELED; cancel applies only to a PENDING or RUNNING job"):
        await store.jobs.cancel(running.job_id)
    # The canceled job's worker learns it on its next call.
    with pytest.raises(InvalidState, match="it is CANCELED"):
        await store.jobs.finish(running.job_id, "too late")
    done = await store.jobs.finish((await _running(store)).job_id, "ok")
    with pytest.raises(InvalidState, match="it is SUCCEEDED"):
        await store.jobs.cancel(done.job_id)


@pytest.mark.parametrize("end", ["running", "fail", "mark_timed_out", "cancel"])
async def test_reset_gives_a_fresh_start(store: AsyncStore, end: str) -> None:
    job = await _running(store)
    retried = await store.jobs.retry_or_fail(job.job_id, "flaky", backoff_base=0)
    assert retried == 1
    job = await store.jobs.start(job.job_id, lease_seconds=60)
    if end == "fail":
        await store.jobs.fail(job.job_id, "x")
    elif end == "mark_timed_out":
        await store.jobs.mark_timed_out(job.job_id)
    elif end == "cancel":
        await store.jobs.cancel(job.job_id)
    reset = await store.jobs.reset(job.job_id)
    assert reset.status is PENDING and reset.retry_count == 0 and reset.result is None
    assert reset.lease_expires_at is None and reset.next_attempt_at == reset.last_update_time
    assert [j.job_id for j in await store.jobs.claim()] == [job.job_id]


async def test_reset_refuses_pending_and_succeeded(store: AsyncStore) -> None:
    pending = await store.jobs.create("work", {})
    allowed = "RUNNING or FAILED or TIMEOUT or CANCELED"
    with pytest.raises(InvalidState, match=f"it is PENDING; reset applies only to a {allowed} job"):
        await store.jobs.reset(pending.job_id)
    done = await store.jobs.finish((await _running(store)).job_id, "ok")
    with pytest.raises(InvalidState, match="it is SUCCEEDED"):
        await store.jobs.reset(done.job_id)
    with pytest.raises(NotFound):
        await store.jobs.reset(str(uuid.uuid4()))


@pytest.mark.parametrize("bad", ["", "x" * 37, None, 5])
async def test_bad_job_ids_are_invalid_parameter(store: AsyncStore, bad: object) -> None:
    for call in (store.jobs.get, store.jobs.start, store.jobs.cancel, store.jobs.reset, store.jobs.heartbeat):
        with pytest.raises(InvalidParameter, match="job_id"):
            await call(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter, match="job_id"):
        await store.jobs.retry_or_fail(bad, "e")  # type: ignore[arg-type]


async def test_result_and_error_must_be_strings_within_the_limit(store: AsyncStore) -> None:
    job = await _running(store)
    with pytest.raises(InvalidParameter, match="result must be a string"):
        await store.jobs.finish(job.job_id, {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter, match="error is 70000 bytes; the limit is 65535"):
        await store.jobs.fail(job.job_id, "e" * 70_000)
    assert (await store.jobs.get(job.job_id)).status is RUNNING
    big = "é" * 30_000  # 60,000 bytes: fits on every backend
    assert (await store.jobs.finish(job.job_id, big)).result == big


async def test_claim_takes_oldest_due_jobs_and_leases_them(store: AsyncStore) -> None:
    first = await store.jobs.create("a", {"n": 1})
    await store.jobs.create("b", {"n": 2})
    third = await store.jobs.create("a", {"n": 3})
    claimed = await store.jobs.claim(["a"], limit=5, lease_seconds=12.5)
    assert [j.job_id for j in claimed] == [first.job_id, third.job_id]
    for job in claimed:
        assert job.status is RUNNING and job.lease_expires_at == job.last_update_time + 12_500
    assert [j.params for j in await store.jobs.claim(limit=5)] == [{"n": 2}]
    assert await store.jobs.claim() == []


async def test_claim_skips_jobs_waiting_for_their_backoff(store: AsyncStore) -> None:
    job = await _running(store)
    assert await store.jobs.retry_or_fail(job.job_id, "later", backoff_base=30, backoff_jitter=0) == 1
    waiting = await store.jobs.get(job.job_id)
    assert waiting.status is PENDING and waiting.next_attempt_at == waiting.last_update_time + 30_000
    assert await store.jobs.claim() == []
    soon = await _running(store, n=2)
    await store.jobs.retry_or_fail(soon.job_id, "quick", backoff_base=0.05)
    await asyncio.sleep(0.15)
    assert [j.job_id for j in await store.jobs.claim(limit=10)] == [soon.job_id]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"limit": 0}, "limit 0"),
        ({"limit": 1001}, "from 1 to 1000"),
        ({"limit": True}, "limit True"),
        ({"lease_seconds": 0}, "lease_seconds 0"),
        ({"lease_seconds": float("nan")}, "lease_seconds nan"),
        ({"job_names": "train"}, r"expected a list of job names \(e.g. \['train'\]\)"),
        ({"job_names": []}, "job_names is empty"),
        ({"job_names": ["ok", ""]}, "a name in job_names"),
    ],
)
async def test_claim_rejects_bad_arguments(store: AsyncStore, kwargs: dict, match: str) -> None:
    await store.jobs.create("train", {})
    with pytest.raises(InvalidParameter, match=match):
        await store.jobs.claim(**kwargs)
    assert (await store.jobs.count_by_status())[PENDING] == 1


async def test_heartbeat_extends_the_lease_only(store: AsyncStore) -> None:
    await store.jobs.create("beat", {})
    [job] = await store.jobs.claim(lease_seconds=1)
    beat = await store.jobs.heartbeat(job.job_id, lease_seconds=120)
    assert beat.status is RUNNING and beat.last_update_time == job.last_update_time
    assert beat.lease_expires_at is not None and beat.lease_expires_at >= job.last_update_time + 120_000
    with pytest.raises(InvalidParameter, match="lease_seconds -1"):
        await store.jobs.heartbeat(job.job_id, lease_seconds=-1)


async def test_requeue_expired_requeues_dead_workers_jobs_and_times_out_overdue(store: AsyncStore) -> None:
    expired = await store.jobs.create("w", {"k": "expired"})
    overdue = await store.jobs.create("w", {"k": "overdue"}, timeout=0.05)
    alive = await store.jobs.create("w", {"k": "alive"}, timeout=3600)
    unleased = await store.jobs.create("w", {"k": "unleased"})
    await store.jobs.claim(limit=1, lease_seconds=0.05)  # expired
    await store.jobs.claim(limit=2, lease_seconds=600)  # overdue (still leased), alive
    await store.jobs.start(unleased.job_id)
    await asyncio.sleep(0.2)
    result = await store.jobs.requeue_expired(backoff_base=0)
    assert (result.requeued, result.timed_out, result.failed) == (1, 1, 0)
    requeued = await store.jobs.get(expired.job_id)
    assert requeued.status is PENDING and requeued.lease_expires_at is None
    # The expired lease was an attempt: counted, with the reason, due after the backoff (0 here).
    assert requeued.retry_count == 1 and requeued.result == "lease expired: its worker died or hung 1 time in a row"
    assert requeued.next_attempt_at == requeued.last_update_time
    timed_out = await store.jobs.get(overdue.job_id)
    assert timed_out.status is JobStatus.TIMEOUT and "timeout" in (timed_out.result or "")
    assert (await store.jobs.get(alive.job_id)).status is RUNNING
    assert (await store.jobs.get(unleased.job_id)).status is RUNNING
    # Nothing left to do: a second sweep (from another host, say) counts nothing.
    again = await store.jobs.requeue_expired()
    assert (again.requeued, again.timed_out, again.failed) == (0, 0, 0)
    assert [j.job_id for j in await store.jobs.claim(limit=5)] == [expired.job_id]


async def test_requeued_job_refuses_its_old_workers_heartbeat(store: AsyncStore) -> None:
    await store.jobs.create("w", {})
    [job] = await store.jobs.claim(lease_seconds=0.05)
    await asyncio.sleep(0.15)
    assert (await store.jobs.requeue_expired()).requeued == 1
    with pytest.raises(InvalidState, match="it is PENDING; heartbeat applies only to a RUNNING job"):
        await store.jobs.heartbeat(job.job_id)


async def test_count_by_status_lists_every_status(store: AsyncStore) -> None:
    assert await store.jobs.count_by_status() == dict.fromkeys(JobStatus, 0)
    await store.jobs.create_many([NewJob("a", {}), NewJob("a", {}), NewJob("b", {})])
    await store.jobs.finish((await _running(store, "a")).job_id, "ok")
    await store.jobs.cancel((await store.jobs.create("b", {})).job_id)
    counts = await store.jobs.count_by_status()
    assert counts[PENDING] == 3 and counts[JobStatus.SUCCEEDED] == 1 and counts[JobStatus.CANCELED] == 1
    assert sum(counts.values()) == 5
    by_name = await store.jobs.count_by_status("a")
    assert (by_name[PENDING], by_name[JobStatus.SUCCEEDED], by_name[JobStatus.CANCELED]) == (2, 1, 0)
    with pytest.raises(InvalidParameter, match="job_name"):
        await store.jobs.count_by_status("")
