"""The one retry loop behind connect and transaction retries, and which failures it may
retry (no database)."""

from __future__ import annotations

import pymysql
import pytest
from asyncpg.exceptions import DeadlockDetectedError, InternalClientError

from asyncstore.retry import Backoff, retrying
from asyncstore.errors import TemporarilyUnavailable
from asyncstore.translate import classify, leaves_connection_broken
from asyncstore.uow import _Progress


class Flaky(Exception):
    """A failure the predicate below calls transient."""


def test_backoff_doubles_from_base_up_to_cap() -> None:
    assert [Backoff(base=0.2, cap=5.0).delay(n) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert Backoff(base=1.0, cap=10.0).delay(10_000) == 10.0  # no overflow on a huge retry number


def test_jitter_stays_within_half_and_one_and_a_half_of_the_wait() -> None:
    waits = [Backoff(base=0.04, cap=1.0, jitter=True).delay(2) for _ in range(200)]
    assert all(0.04 <= w < 0.12 for w in waits)
    assert len(set(waits)) > 1


async def _run(failures: int, retries: int, transient: bool = True) -> tuple[list[int], list[tuple[int, float]]]:
    calls: list[int] = []
    logged: list[tuple[int, float]] = []

    async def attempt() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= failures:
            raise Flaky(len(calls)) if transient else ValueError(len(calls))
        return "done"

    result = await retrying(
        attempt,
        retries=retries,
        backoff=Backoff(base=0.001, cap=0.002),
        should_retry=lambda exc: isinstance(exc, Flaky),
        on_retry=lambda exc, n, delay: logged.append((n, delay)),
    )
    assert result == "done"
    return calls, logged


async def test_retries_until_success_and_reports_each_retry() -> None:
    calls, logged = await _run(failures=2, retries=3)
    assert calls == [1, 2, 3]
    assert logged == [(1, 0.001), (2, 0.002)]


async def test_gives_up_after_the_last_retry_with_the_attempts_own_error() -> None:
    with pytest.raises(Flaky) as info:
        await _run(failures=5, retries=2)
    assert info.value.args == (3,)  # 1 attempt + 2 retries, the third failure surfaces as it is


async def test_a_failure_the_predicate_refuses_is_raised_at_once() -> None:
    with pytest.raises(ValueError) as info:
        await _run(failures=1, retries=5, transient=False)
    assert info.value.args == (1,)


async def test_no_retries_means_one_attempt() -> None:
    with pytest.raises(Flaky):
        await _run(failures=1, retries=0)


# --- which failures of a COMMIT may be retried ------------------------------------------

_DEADLOCK = pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock; try restarting transaction")
_LOST = pymysql.err.OperationalError(2013, "Lost connection to MySQL server during query")


def _failed_commit() -> _Progress:
    """An attempt that got as far as sending COMMIT."""
    progress = _Progress()
    progress.connected = progress.committing = True
    return progress


def test_a_commit_the_server_says_it_rolled_back_is_retried_even_for_a_write_that_is_not_idempotent() -> None:
    # MariaDB answers a Galera certification failure at COMMIT with a deadlock error:
    # nothing of the transaction took effect, so running it again cannot double it.
    assert classify(_DEADLOCK) is not None and classify(_DEADLOCK).rolled_back  # type: ignore[union-attr]
    assert _failed_commit().may_retry(_DEADLOCK, replay_safe=False)
    pg_deadlock = DeadlockDetectedError("deadlock detected")
    assert classify(pg_deadlock).rolled_back  # type: ignore[union-attr]
    assert _failed_commit().may_retry(pg_deadlock, replay_safe=False)


def test_a_commit_whose_connection_was_lost_is_retried_only_when_replay_safe() -> None:
    # The outcome is unknown: the COMMIT may have taken effect before the connection went.
    assert not classify(_LOST).rolled_back  # type: ignore[union-attr]
    assert not _failed_commit().may_retry(_LOST, replay_safe=False)
    assert _failed_commit().may_retry(_LOST, replay_safe=True)


def test_a_connection_left_in_a_broken_state_is_discarded_and_the_call_retried_where_safe() -> None:
    # asyncpg, when the session is killed in the middle of an exchange, can raise this
    # instead of a lost connection (seen under tests/test_web_app.py's session killer).
    broken = InternalClientError("cannot switch to state 15; another operation (2) is in progress")
    found = classify(broken)
    assert found is not None and found.kind is TemporarilyUnavailable and found.retryable
    assert leaves_connection_broken(broken) and not leaves_connection_broken(_LOST)
    assert _failed_commit().may_retry(broken, replay_safe=True)
    assert not _failed_commit().may_retry(broken, replay_safe=False)  # the COMMIT's outcome is unknown
