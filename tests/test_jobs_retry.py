"""Job queue: retry_or_fail, exponential backoff and the ASYNCSTORE_JOB_* variables."""

from __future__ import annotations

import uuid

import pytest

from asyncstore import AsyncStore, ConfigurationError, InvalidState, NotFound
from asyncstore.entities import Job, JobStatus, NewJob
from asyncstore.jobs.rules import RetryPolicy, retry_policy


async def _claimed(store: AsyncStore, job_id: str) -> Job:
    """Make the (PENDING, maybe backing off) job claimable now and run it."""
    return await store.jobs.start(job_id, lease_seconds=60)


async def test_retry_or_fail_counts_retries_then_fails(store: AsyncStore) -> None:
    job = await store.jobs.create("flaky", {})
    for expected in (1, 2):
        await _claimed(store, job.job_id)
        count = await store.jobs.retry_or_fail(job.job_id, f"error {expected}", max_retries=2, backoff_base=0)
        assert count == expected
        retried = await store.jobs.get(job.job_id)
        assert retried.status is JobStatus.PENDING and retried.retry_count == expected
        assert retried.result == f"error {expected}" and retried.lease_expires_at is None
    await _claimed(store, job.job_id)
    assert await store.jobs.retry_or_fail(job.job_id, "final", max_retries=2) is None
    failed = await store.jobs.get(job.job_id)
    assert failed.status is JobStatus.FAILED and failed.retry_count == 2 and failed.result == "final"


async def test_backoff_doubles_from_base_up_to_cap_on_the_database_clock(store: AsyncStore) -> None:
    job = await store.jobs.create("flaky", {})
    waits = []
    for _ in range(5):
        await _claimed(store, job.job_id)
        await store.jobs.retry_or_fail(
            job.job_id, "e", max_retries=10, backoff_base=2, backoff_cap=10, backoff_jitter=0
        )
        retried = await store.jobs.get(job.job_id)
        waits.append(retried.next_attempt_at - retried.last_update_time)
    assert waits == [2_000, 4_000, 8_000, 10_000, 10_000]


async def test_retry_defaults_come_from_the_environment_at_call_time(
    store: AsyncStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await store.jobs.create("flaky", {})
    monkeypatch.setenv("ASYNCSTORE_JOB_MAX_RETRIES", "1")
    monkeypatch.setenv("ASYNCSTORE_JOB_BACKOFF_BASE", "0.25")
    monkeypatch.setenv("ASYNCSTORE_JOB_BACKOFF_CAP", "60")
    monkeypatch.setenv("ASYNCSTORE_JOB_BACKOFF_JITTER", "0")
    await _claimed(store, job.job_id)
    assert await store.jobs.retry_or_fail(job.job_id, "e") == 1
    retried = await store.jobs.get(job.job_id)
    assert retried.next_attempt_at - retried.last_update_time == 250
    await _claimed(store, job.job_id)
    assert await store.jobs.retry_or_fail(job.job_id, "e") is None  # 1 retry allowed: now FAILED
    other = await _claimed(store, (await store.jobs.create("flaky", {})).job_id)
    # A keyword wins over the variable.
    assert await store.jobs.retry_or_fail(other.job_id, "e", max_retries=5, backoff_base=0) == 1


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("ASYNCSTORE_JOB_MAX_RETRIES", "three", "expected a whole number >= 0"),
        ("ASYNCSTORE_JOB_MAX_RETRIES", "-1", "expected a whole number >= 0"),
        ("ASYNCSTORE_JOB_BACKOFF_BASE", "fast", "expected a finite number >= 0"),
        ("ASYNCSTORE_JOB_BACKOFF_CAP", "inf", "expected a finite number >= 0"),
    ],
)
async def test_bad_environment_values_name_the_variable_and_write_nothing(
    store: AsyncStore, monkeypatch: pytest.MonkeyPatch, var: str, value: str, expected: str
) -> None:
    job = await _claimed(store, (await store.jobs.create("flaky", {})).job_id)
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigurationError, match=f"{var}='{value}' is not valid: {expected}"):
        await store.jobs.retry_or_fail(job.job_id, "e")
    assert await store.jobs.get(job.job_id) == job


async def test_bad_keywords_name_the_keyword(store: AsyncStore) -> None:
    job = await _claimed(store, (await store.jobs.create("flaky", {})).job_id)
    with pytest.raises(ConfigurationError, match="keyword max_retries=-2"):
        await store.jobs.retry_or_fail(job.job_id, "e", max_retries=-2)
    with pytest.raises(ConfigurationError, match="keyword backoff_cap=True"):
        await store.jobs.retry_or_fail(job.job_id, "e", backoff_cap=True)  # type: ignore[arg-type]
    assert (await store.jobs.get(job.job_id)).status is JobStatus.RUNNING


async def test_retry_or_fail_needs_a_running_job(store: AsyncStore) -> None:
    pending = await store.jobs.create("flaky", {})
    with pytest.raises(InvalidState, match="it is PENDING; retry_or_fail applies only to a RUNNING job"):
        await store.jobs.retry_or_fail(pending.job_id, "e")
    done = await store.jobs.finish((await _claimed(store, pending.job_id)).job_id, "ok")
    with pytest.raises(InvalidState, match="it is SUCCEEDED"):
        await store.jobs.retry_or_fail(done.job_id, "e")
    with pytest.raises(NotFound, match="does not exist"):
        await store.jobs.retry_or_fail(str(uuid.uuid4()), "e")
    assert await store.jobs.get(done.job_id) == done


def test_retry_policy_defaults_and_precedence() -> None:
    assert retry_policy(environ={}) == RetryPolicy(max_retries=3, backoff_base=1.0, backoff_cap=300.0, backoff_jitter=0.5)
    env = {"ASYNCSTORE_JOB_MAX_RETRIES": "7", "ASYNCSTORE_JOB_BACKOFF_BASE": "", "ASYNCSTORE_JOB_BACKOFF_CAP": "9"}
    assert retry_policy(environ=env) == RetryPolicy(max_retries=7, backoff_base=1.0, backoff_cap=9.0, backoff_jitter=0.5)
    assert retry_policy(max_retries=0, backoff_cap=1, environ=env).max_retries == 0
    policy = RetryPolicy(max_retries=3, backoff_base=0.5, backoff_cap=3.0)
    assert [policy.backoff_ms(n) for n in range(5)] == [500, 1000, 2000, 3000, 3000]
    assert RetryPolicy(3, 1.0, 60.0).backoff_ms(10_000) == 60_000  # no overflow on huge counts


def test_jitter_takes_a_random_share_off_each_wait() -> None:
    policy = RetryPolicy(max_retries=3, backoff_base=1.0, backoff_cap=60.0, backoff_jitter=0.5)
    waits = [policy.backoff_ms(2) for _ in range(200)]
    assert all(2_000 <= wait <= 4_000 for wait in waits)
    assert len(set(waits)) > 50  # spread out, not one instant for every job
    assert max(waits) - min(waits) > 1_000
    assert {RetryPolicy(3, 1.0, 60.0, 0.0).backoff_ms(2) for _ in range(20)} == {4_000}


async def test_jittered_retries_of_jobs_that_failed_together_are_spread(store: AsyncStore) -> None:
    created = await store.jobs.create_many([NewJob("together", {"i": i}) for i in range(20)])
    for job in created:
        await _claimed(store, job.job_id)
    for job in created:
        await store.jobs.retry_or_fail(job.job_id, "db down", backoff_base=10, backoff_jitter=0.5)
    waits = [(j.next_attempt_at or 0) - j.last_update_time for j in [await store.jobs.get(c.job_id) for c in created]]
    assert all(5_000 <= wait <= 10_000 for wait in waits)
    assert len(set(waits)) > 10


async def test_bad_jitter_is_refused(store: AsyncStore, monkeypatch: pytest.MonkeyPatch) -> None:
    job = await _claimed(store, (await store.jobs.create("flaky", {})).job_id)
    with pytest.raises(ConfigurationError, match="backoff_jitter.*from 0.0 to 1.0"):
        await store.jobs.retry_or_fail(job.job_id, "e", backoff_jitter=1.5)
    monkeypatch.setenv("ASYNCSTORE_JOB_BACKOFF_JITTER", "-0.1")
    with pytest.raises(ConfigurationError, match="ASYNCSTORE_JOB_BACKOFF_JITTER"):
        await store.jobs.retry_or_fail(job.job_id, "e")
    assert (await store.jobs.get(job.job_id)).status is JobStatus.RUNNING
