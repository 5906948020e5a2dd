"""The worker runtime: claim jobs in batches, run their handlers, end each as it must.

One :class:`Worker` is a few asyncio tasks around one store:

* the **claim loop** takes up to its free concurrency in one claim; when the queue
  has no more due jobs it waits for a PostgreSQL notification (:mod:`.wakeup`), a
  freed slot or the poll timer (from ``poll_interval`` doubling up to
  ``max_poll_interval`` while idle);
* one **task per job** runs its handler (an ``async def`` on the loop, a plain
  function in the worker's thread pool) under the job's ``timeout``;
* the **finisher** writes the results of handlers that returned with
  ``finish_many``: every result that arrives while one batch commits joins the
  next, so jobs that end together share one transaction;
* the **heartbeat** extends the leases of every held job in one statement every
  third of ``lease_seconds``, and cancels the handler of a job that is no longer
  held (canceled, or requeued after a stall and claimed again);
* the **sweeper** runs ``requeue_expired`` about every half lease, so the jobs of
  dead workers come back (as attempts) and overdue ones time out.

Every call that ends a job carries the claim's lease token, so a worker that
stalled past its lease can never end a job another worker has since claimed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Union

from asyncstore.config import Backend
from asyncstore.entities import FinishedJob, Job
from asyncstore.errors import InvalidParameter, InvalidState, NotFound, StoreError
from asyncstore.jobs import rules
from asyncstore.store import AsyncStore
from asyncstore.worker import wakeup

log = logging.getLogger("asyncstore.worker")

Handler = Callable[[dict[str, Any], "JobContext"], Union[Any, Awaitable[Any]]]
"""A job handler: ``handler(params, context)``; an ``async def`` or a plain function.

What it returns is the job's result: a string as it is, anything else as JSON
text. An exception sends the job to ``retry_or_fail``.
"""

_FINAL_FLUSH_TRIES = 5
"""At shutdown, tries to record buffered results before leaving them to their leases."""
_ERROR_PREFIX_BYTES = 60_000
"""Error texts are cut to this many bytes, below the 65,535 a job's result holds."""


@dataclasses.dataclass(frozen=True)
class JobContext:
    """What a handler knows about the run it is in.

    Attributes:
        job_id: the job.
        job_name: its name.
        attempt: 1 for the first run, 2 for the first retry, …
        lease_token: the claim's fencing token (``Job.lease_token``).
        timeout: the job's timeout in seconds, or None.
        cancelled: set when the worker gives up on this run (its timeout passed, the
            worker is shutting down, or the job was canceled or claimed by another
            worker). An ``async def`` handler is also cancelled (CancelledError); a
            plain function cannot be interrupted and should check it and return.
    """

    job_id: str
    job_name: str
    attempt: int
    lease_token: int
    timeout: float | None
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event, repr=False)


@dataclasses.dataclass
class _Run:
    """A job being run: its task, context and why the worker stopped it (if it did)."""

    job: Job
    context: JobContext
    task: asyncio.Task[None] | None = None
    stopped_because: str | None = None  # "shutdown" or "lost"


class Worker:
    """Run the handlers of queued jobs until stopped.

    Example::

        async def train(params, ctx):
            return {"accuracy": 0.9}

        worker = Worker(store, {"train": train}, concurrency=8)
        await worker.run()           # until worker.stop() (or SIGTERM under `asyncstore worker`)

    Args:
        store: an open :class:`AsyncStore` (used, never closed) or a URI (opened for
            the run and closed after).
        handlers: job name -> handler (see :data:`Handler`).
        queues: the job names to claim (a subset of the handlers'); default all.
        concurrency: jobs run at once (1 to 1,000); also the size of a claim batch.
        lease_seconds: each claim's lease, renewed every third of it while the job runs.
        poll_interval: seconds between claims when the queue is idle, doubling up
            to ``max_poll_interval`` (the first wait after finding nothing).
        max_poll_interval: the longest wait between claims when idle; on PostgreSQL
            a notification ends a wait at once.
        grace_seconds: at :meth:`stop`, how long running handlers may take to end
            before they are cancelled and their jobs released to PENDING.
        max_retries, backoff_base, backoff_cap, backoff_jitter: the retry policy of
            failed handlers and expired leases (see ``store.jobs.retry_or_fail``).
        listen: on PostgreSQL, wake up on ``LISTEN``/``NOTIFY`` (default True).

    Raises:
        InvalidParameter: bad handlers, queues or numbers (named).

    Attributes:
        counts: how the jobs this worker ran ended: ``succeeded``, ``retried``,
            ``failed``, ``timed_out``, ``released``, ``lost`` (taken away while it ran),
            ``refused`` (ended but already re-claimed elsewhere).
    """

    def __init__(
        self,
        store: AsyncStore | str,
        handlers: Mapping[str, Handler],
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 8,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.05,
        max_poll_interval: float = 1.0,
        grace_seconds: float = 30.0,
        max_retries: int | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        backoff_jitter: float | None = None,
        listen: bool = True,
    ) -> None:
        if not isinstance(store, (AsyncStore, str)):
            raise InvalidParameter(f"store must be an AsyncStore or a URI string, not {type(store).__name__}")
        if not isinstance(handlers, Mapping) or not handlers:
            raise InvalidParameter("handlers must be a non-empty dict of job name -> handler function")
        for name, handler in handlers.items():
            rules.job_name(name, "a handler's job name")
            if not callable(handler):
                raise InvalidParameter(f"the handler of {name!r} is {type(handler).__name__}, not a function")
        names = rules.job_names(queues) if queues is not None else sorted(handlers)
        unknown = [name for name in names or () if name not in handlers]
        if unknown:
            raise InvalidParameter(f"queues {unknown} have no handler; handlers exist for {sorted(handlers)}")
        self._store_or_uri = store
        self.handlers = dict(handlers)
        self.queues: list[str] = list(names or ())
        self.concurrency = rules.bounded_int("concurrency", concurrency, 1, rules.MAX_CLAIM)
        self.lease_seconds = lease_seconds
        rules.seconds_ms("lease_seconds", lease_seconds)
        rules.seconds_ms("poll_interval", poll_interval)
        rules.seconds_ms("max_poll_interval", max_poll_interval)
        if poll_interval > max_poll_interval:
            raise InvalidParameter(
                f"poll_interval {poll_interval} is longer than max_poll_interval {max_poll_interval}"
            )
        if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, (int, float)) or not grace_seconds >= 0:
            raise InvalidParameter(f"grace_seconds {grace_seconds!r} is not valid: expected a number of seconds >= 0")
        self.poll_interval, self.max_poll_interval, self.grace_seconds = poll_interval, max_poll_interval, grace_seconds
        self.policy = rules.retry_policy(max_retries, backoff_base, backoff_cap, backoff_jitter)
        self.listen = listen
        self.counts: dict[str, int] = dict.fromkeys(
            ("succeeded", "retried", "failed", "timed_out", "released", "lost", "refused"), 0
        )
        self._store: AsyncStore | None = None
        self._runs: dict[str, _Run] = {}  # claimed and running
        self._held: dict[str, int] = {}  # claimed and not yet ended in the database: id -> token
        self._finished: list[FinishedJob] = []
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # a notification, a freed slot, a stop
        self._finished_ready = asyncio.Event()
        self._flushing = asyncio.Lock()  # one finish_many at a time; the drain waits for it
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._main: asyncio.Task[Any] | None = None
        self._aborted = False

    # --- control -----------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; :meth:`run` returns once running handlers ended (within the grace period).

        With ``now=True``, :meth:`run` returns at once: handlers are cancelled and
        their jobs left to their leases (they come back as attempts when the leases
        expire). Safe to call from a signal handler on the worker's loop.
        """
        self._stopping.set()
        self._wake.set()
        if now and self._main is not None:
            self._aborted = True
            self._main.cancel()

    async def run(self) -> None:
        """Claim and run jobs until :meth:`stop`; then finish, release or leave what is held."""
        self._stopping.clear()
        self._aborted = False
        self._main = asyncio.current_task()
        try:
            await self._run()
        except asyncio.CancelledError:
            if self._aborted and self._main is not None and self._main.uncancel() == 0:
                return  # stop(now=True)
            raise
        else:
            if self._aborted and self._main is not None and self._main.cancelling():
                self._main.uncancel()  # the cancel of stop(now=True) landed where asyncio swallows it
        finally:
            self._main = None

    async def _run(self) -> None:
        owned = isinstance(self._store_or_uri, str)
        store = await AsyncStore.open(self._store_or_uri) if isinstance(self._store_or_uri, str) else self._store_or_uri
        self._store = store
        self._threads = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="asyncstore-job")
        helpers = [
            asyncio.create_task(self._finisher(), name="asyncstore-worker-finisher"),
            asyncio.create_task(self._heartbeat(), name="asyncstore-worker-heartbeat"),
            asyncio.create_task(self._sweeper(), name="asyncstore-worker-sweeper"),
        ]
        listener: wakeup.Listener | None = None
        try:
            if self.listen:
                listener = await wakeup.listen(store, self._notified)
            log.info(
                "worker started: %s, concurrency %d, wake-ups by %s",
                ", ".join(self.queues), self.concurrency, "LISTEN" if listener else "polling",
            )
            listener = await self._claim_loop(store, listener)
            await self._drain(store)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            for run in self._runs.values():  # only after stop(now=True): left to their leases
                if run.task is not None:
                    run.task.cancel()
            if listener is not None:
                await listener.close()
            self._threads.shutdown(wait=False, cancel_futures=True)
            if owned:
                await store.close()
            log.info("worker stopped: %s", ", ".join(f"{k} {v}" for k, v in self.counts.items()))

    # --- claiming ------------------------------------------------------------------------

    def _notified(self, job_name: str) -> None:
        if not job_name or job_name in self.handlers:
            self._wake.set()

    async def _claim_loop(self, store: AsyncStore, listener: wakeup.Listener | None) -> wakeup.Listener | None:
        idle_wait = self.poll_interval
        last_listen_try = time.monotonic()
        while not self._stopping.is_set():
            free = self.concurrency - len(self._runs)
            if free <= 0:
                self._wake.clear()
                await self._wake.wait()  # a slot frees, a stop
                continue
            self._wake.clear()
            try:
                claimed = await self._finish_and_claim(store, free)
            except StoreError as exc:
                log.warning("claim failed (%s); trying again in %.2f s", exc, idle_wait)
                claimed = []
            for job in claimed:
                self._start(job)
            if len(claimed) == free:
                idle_wait = self.poll_interval
                continue
            # The queue has no more due jobs: wait for a notification, a freed slot or the timer.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle_wait):
                    await self._wake.wait()
            idle_wait = self.poll_interval if claimed else min(idle_wait * 2, self.max_poll_interval)
            if self.listen and store.backend is Backend.POSTGRESQL and (listener is None or not listener.alive):
                if time.monotonic() - last_listen_try >= self.max_poll_interval:
                    last_listen_try = time.monotonic()
                    if listener is not None:
                        await listener.close()
                    listener = await wakeup.listen(store, self._notified)
        return listener

    async def _finish_and_claim(self, store: AsyncStore, free: int) -> list[Job]:
        """Write the results waiting for the finisher and claim up to ``free`` jobs, in one transaction."""
        async with self._flushing:
            batch, self._finished = self._finished, []
            try:
                refused, claimed = await store.jobs.finish_and_claim(
                    batch, self.queues, limit=free, lease_seconds=self.lease_seconds
                )
            except BaseException:
                self._finished[:0] = batch  # the finisher tries them again
                self._finished_ready.set()
                raise
            self._settled(batch, refused)
        return claimed

    def _start(self, job: Job) -> None:
        token = job.lease_token
        assert token is not None  # a claimed job is RUNNING
        context = JobContext(job.job_id, job.job_name, job.retry_count + 1, token, job.timeout)
        run = _Run(job, context)
        self._runs[job.job_id] = run
        self._held[job.job_id] = token
        run.task = asyncio.create_task(self._run_job(run), name=f"asyncstore-job-{job.job_id}")

    # --- one job -------------------------------------------------------------------------

    async def _run_job(self, run: _Run) -> None:
        job, context = run.job, run.context
        try:
            try:
                async with asyncio.timeout(job.timeout):
                    value = await self._call(self.handlers[job.job_name], job, context)
            except TimeoutError:
                context.cancelled.set()
                await self._end(run, self._timed_out(run))
                return
            except asyncio.CancelledError:
                context.cancelled.set()
                if run.stopped_because is None:
                    raise  # the worker itself is going away
                return  # the drain releases it, or it was taken away ("lost")
            except Exception as exc:
                await self._end(run, self._failed(run, exc))
                return
            try:
                result = value if isinstance(value, str) else json.dumps(value, allow_nan=False)
                rules.text("result", result)
            except (TypeError, ValueError, InvalidParameter) as exc:
                await self._end(run, self._unstorable(run, exc))
                return
            # Written by the claim loop's next finish_and_claim (woken first, below), or the finisher.
            self._finished.append(FinishedJob(job.job_id, result, context.lease_token))
        finally:
            if self._runs.pop(job.job_id, None) is not None:
                self._wake.set()  # a slot is free
            if self._finished:
                self._finished_ready.set()

    async def _call(self, handler: Handler, job: Job, context: JobContext) -> Any:
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None)):
            return await handler(job.params, context)
        loop = asyncio.get_running_loop()
        value = await loop.run_in_executor(self._threads, functools.partial(handler, job.params, context))
        if inspect.isawaitable(value):
            value = await value
        return value

    async def _timed_out(self, run: _Run) -> str:
        message = f"timed out: ran longer than its timeout of {run.job.timeout:g} s"
        await self._store_call().jobs.mark_timed_out(run.job.job_id, token=run.context.lease_token, error=message)
        return "timed_out"

    async def _failed(self, run: _Run, exc: Exception) -> str:
        message = f"{type(exc).__name__}: {exc}".encode()[:_ERROR_PREFIX_BYTES].decode(errors="ignore")
        retries = await self._store_call().jobs.retry_or_fail(
            run.job.job_id, message, self.policy.max_retries, backoff_base=self.policy.backoff_base,
            backoff_cap=self.policy.backoff_cap, backoff_jitter=self.policy.backoff_jitter,
            token=run.context.lease_token,
        )
        return "failed" if retries is None else "retried"

    async def _unstorable(self, run: _Run, exc: Exception) -> str:
        message = f"the handler's result cannot be stored: {exc}"[:_ERROR_PREFIX_BYTES]
        await self._store_call().jobs.fail(run.job.job_id, message, token=run.context.lease_token)
        return "failed"

    async def _end(self, run: _Run, outcome: Awaitable[str]) -> None:
        """Write how a job ended (not a success); a job re-claimed meanwhile is refused, and left alone."""
        try:
            self.counts[await outcome] += 1
        except (InvalidState, NotFound) as exc:
            self.counts["refused"] += 1
            log.warning("job %s ended but is no longer ours: %s", run.job.job_id, exc)
        except StoreError as exc:  # the lease brings it back as an attempt
            log.error("cannot record how job %s ended: %s; its lease will expire", run.job.job_id, exc)
        finally:
            self._held.pop(run.job.job_id, None)

    def _store_call(self) -> AsyncStore:
        assert self._store is not None
        return self._store

    # --- batched finishes, heartbeats, sweeps --------------------------------------------

    async def _finisher(self) -> None:
        while True:
            await self._finished_ready.wait()
            async with self._flushing:
                await self._flush()

    async def _flush(self) -> None:
        """Write every buffered result in one ``finish_many``; keep them for the next try if it fails."""
        self._finished_ready.clear()
        batch, self._finished = self._finished, []
        if not batch:
            return
        try:
            refused = await self._store_call().jobs.finish_many(batch)
        except StoreError as exc:
            log.error("finishing %d jobs failed (%s); trying again", len(batch), exc)
            self._finished[:0] = batch
            await asyncio.sleep(min(self.lease_seconds / 10, 1.0))
            self._finished_ready.set()
            return
        self._settled(batch, refused)

    def _settled(self, batch: list[FinishedJob], refused: list[str]) -> None:
        """Account for a batch of results written (``refused``: those no longer ours)."""
        for item in batch:
            self._held.pop(item.job_id, None)
        self.counts["succeeded"] += len(batch) - len(refused)
        self.counts["refused"] += len(refused)
        if refused:
            log.warning("%d finished jobs were no longer ours (re-claimed or canceled): %s", len(refused), refused)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            held = dict(self._held)
            if not held:
                continue
            try:
                still = await self._store_call().jobs.heartbeat_many(held, self.lease_seconds)
            except StoreError as exc:
                log.warning("heartbeat failed (%s); trying again", exc)
                continue
            for job_id in held.keys() - still:
                run = self._runs.get(job_id)
                if run is not None and run.task is not None and job_id in self._held:
                    log.warning("job %s is no longer ours (canceled, or claimed again): stopping its handler", job_id)
                    run.stopped_because = "lost"
                    run.context.cancelled.set()
                    run.task.cancel()
                    self._held.pop(job_id, None)
                    self.counts["lost"] += 1

    async def _sweeper(self) -> None:
        period = max(self.lease_seconds / 2, 0.05)
        while True:
            await asyncio.sleep(period * random.uniform(0.5, 1.5))  # hosts spread out their sweeps
            try:
                swept = await self._store_call().jobs.requeue_expired(
                    self.policy.max_retries, backoff_base=self.policy.backoff_base,
                    backoff_cap=self.policy.backoff_cap, backoff_jitter=self.policy.backoff_jitter,
                )
            except StoreError as exc:
                log.warning("requeue_expired failed (%s); trying again", exc)
                continue
            if swept.requeued or swept.timed_out or swept.failed:
                log.info(
                    "expired leases: %d requeued, %d failed for good; %d timed out",
                    swept.requeued, swept.failed, swept.timed_out,
                )

    # --- shutdown ----------------------------------------------------------------------------

    async def _drain(self, store: AsyncStore) -> None:
        """Let running handlers end within the grace period; cancel and release the rest; flush."""
        if self._aborted:
            return  # stop(now=True): what is held is left to its lease
        running = [run.task for run in self._runs.values() if run.task is not None]
        if running:
            log.info("stopping: waiting up to %g s for %d running jobs", self.grace_seconds, len(running))
            await asyncio.wait(running, timeout=self.grace_seconds)
        late = list(self._runs.values())
        for run in late:
            run.stopped_because = "shutdown"
            run.context.cancelled.set()
            if run.task is not None:
                run.task.cancel()
        await asyncio.gather(*(run.task for run in late if run.task is not None), return_exceptions=True)
        for run in late:
            try:
                await store.jobs.release(run.job.job_id, token=run.context.lease_token)
                self.counts["released"] += 1
            except StoreError as exc:
                log.warning("cannot release job %s (%s); its lease will expire", run.job.job_id, exc)
            self._held.pop(run.job.job_id, None)
        async with self._flushing:  # after the finisher's batch in flight, if any
            for _ in range(_FINAL_FLUSH_TRIES):
                if not self._finished:
                    break
                await self._flush()
        if self._finished:
            log.error("%d finished jobs could not be recorded; their leases will expire", len(self._finished))
