"""One retry loop: a backoff policy and an async loop that asks whether to retry.

Both of asyncstore's retries run through :func:`retrying`: the engine's connect retry
(exponential backoff; a permanent refusal such as wrong credentials fails at once)
and the unit of work's transaction retry (jittered backoff; a failure is retried
only where running the transaction again cannot duplicate a write). What differs
between them is the :class:`Backoff` and the ``should_retry`` predicate, which
sees the exception of the attempt that just failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Backoff:
    """How long to wait before each retry: ``base * 2 ** (n - 1)`` capped at ``cap``.

    Attributes:
        base: seconds before the first retry.
        cap: the longest wait in seconds.
        jitter: scale each wait by a random factor in [0.5, 1.5), so that
            transactions that failed together (deadlock victims) do not retry in step.
    """

    base: float
    cap: float
    jitter: bool = False

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first)."""
        wait = min(self.cap, self.base * 2.0 ** min(retry - 1, 60))
        return wait * (0.5 + random.random()) if self.jitter else wait


async def retrying(
    attempt: Callable[[], Awaitable[T]],
    *,
    retries: int,
    backoff: Backoff,
    should_retry: Callable[[Exception], bool],
    on_retry: Callable[[Exception, int, float], None],
) -> T:
    """Await ``attempt()`` until it returns, retrying at most ``retries`` times.

    After a failure, the loop retries only if ``should_retry(exc)`` says so and
    retries are left; it then calls ``on_retry(exc, n, delay)`` (to log "retry n of
    retries in delay s") and sleeps ``backoff.delay(n)`` seconds first. Otherwise the
    attempt's exception propagates unchanged. ``BaseException`` (cancellation) is never
    retried.
    """
    retry = 0
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if retry >= retries or not should_retry(exc):
                raise
            retry += 1
            delay = backoff.delay(retry)
            on_retry(exc, retry, delay)
            await asyncio.sleep(delay)
