"""Group commit: one writer task coalesces concurrent requests' spans into shared ``log_spans`` calls.

Each request is a :class:`_Job` on a bounded queue with a future for its own outcome;
the request is answered only when that future is resolved, i.e. after its spans are
committed (or refused). A request's spans are never split across transactions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from asyncstore.entities import Span
from asyncstore.errors import AlreadyExists, InvalidParameter, NotFound, StoreError

log = logging.getLogger(__name__)

LogSpans = Callable[[str, Sequence[Span]], Awaitable[int]]
"""What the writer calls to store one experiment's spans in one transaction (``store.spans.log_spans``)."""

_DATA_ERRORS = (InvalidParameter, AlreadyExists, NotFound)
"""Errors caused by one request's data: the batch is retried request by request."""


class QueueFull(Exception):
    """The queue holds ``queue_limit`` requests already: answer 429."""


class ShuttingDown(Exception):
    """The receiver is stopping and accepts no new request: answer 503."""


@dataclass
class _Job:
    experiment_id: str
    spans: Sequence[Span]
    future: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass
class BatchObserver:
    """Callbacks for metrics; each defaults to doing nothing."""

    on_batch: Callable[[int, float], None] = lambda spans, seconds: None
    """Called after each ``log_spans`` call with its span count and duration."""
    on_queue: Callable[[int], None] = lambda depth: None
    """Called with the queue depth (requests) whenever it changes."""


@dataclass
class _Writer:
    """One writer task and the requests it has taken from the queue."""

    task: asyncio.Task[None] | None = None
    batch: list[_Job] = field(default_factory=list)
    """Taken from the queue, being collected or written."""
    carry: _Job | None = None
    """Taken from the queue, too big for the last batch: first of the next one."""


class GroupCommitter:
    """Coalesces requests into ``log_spans`` calls of at most ``max_batch_spans`` spans.

    A writer takes the first waiting request, then whatever else is queued, waiting at
    most ``max_wait_ms`` for more while the batch is under ``max_batch_spans`` spans
    (a single larger request is written alone). Requests are grouped by
    experiment, one ``log_spans`` call per experiment. ``writers`` writers do this
    concurrently, each in its own transaction, so the database's wait of one overlaps
    the next batch's preparation (two transactions that touch the same trace are
    ordered by its row lock; a deadlock between them is retried by the store).
    """

    def __init__(
        self, log_spans: LogSpans, *, max_batch_spans: int, max_wait_ms: float, queue_limit: int,
        writers: int = 1, observer: BatchObserver | None = None,
    ) -> None:
        self._log_spans = log_spans
        self.max_batch_spans = max_batch_spans
        self.max_wait = max_wait_ms / 1000
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=queue_limit)
        self._observer = observer or BatchObserver()
        self._writers = [_Writer() for _ in range(writers)]
        self._started = False
        self._closing = False

    def start(self) -> None:
        """Start the writer tasks on the running loop."""
        loop = asyncio.get_running_loop()
        for n, writer in enumerate(self._writers):
            writer.task = loop.create_task(self._run(writer), name=f"asyncstore-otlp-writer-{n}")
        self._started = True

    @property
    def depth(self) -> int:
        """Requests waiting in the queue."""
        return self._queue.qsize()

    async def submit(self, experiment_id: str, spans: Sequence[Span]) -> int:
        """Queue one request's spans; return the number written once they are committed.

        Raises:
            QueueFull: the queue is full (nothing queued).
            ShuttingDown: the receiver is stopping (nothing queued).
            StoreError: what ``log_spans`` raised for this request's spans.
        """
        if self._closing or not self._started:
            raise ShuttingDown("the receiver is shutting down")
        job = _Job(experiment_id, spans)
        job.future.add_done_callback(_retrieve)  # read even when the client went away
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(f"the write queue is full ({self._queue.maxsize} requests)") from None
        self._observer.on_queue(self._queue.qsize())
        return await asyncio.shield(job.future)  # a client gone away does not cancel the write

    async def close(self, grace_seconds: float) -> None:
        """Stop accepting requests, write what is queued (within ``grace_seconds``), stop the writers.

        Requests still queued after the grace period fail with :class:`ShuttingDown`.
        """
        self._closing = True
        if not self._started:
            return
        try:
            await asyncio.wait_for(self._queue.join(), grace_seconds)
        except asyncio.TimeoutError:
            log.warning("shutdown grace period over: %d request(s) not written", self._queue.qsize())
        left: list[_Job] = []
        for writer in self._writers:
            if writer.task is not None:
                writer.task.cancel()
                try:
                    await writer.task
                except asyncio.CancelledError:
                    pass
            left += [*writer.batch, *([writer.carry] if writer.carry is not None else [])]
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        for job in left:
            _fail(job, ShuttingDown("the receiver shut down before writing this request"))
        self._started = False

    async def _run(self, writer: _Writer) -> None:
        while True:
            jobs: list[_Job] = []
            writer.batch = jobs
            await self._take(writer, jobs)
            try:
                await self._write(jobs)
            except Exception:  # never let the writer die: each job gets an outcome
                log.exception("OTLP writer failed")
                for job in jobs:
                    _fail(job, StoreError("internal error while writing spans"))
            finally:
                for job in jobs:  # cancelled at shutdown mid-write: still an outcome
                    _fail(job, ShuttingDown("the receiver shut down before writing this request"))
                    self._queue.task_done()
                self._observer.on_queue(self._queue.qsize())

    async def _take(self, writer: _Writer, jobs: list[_Job]) -> None:
        """Fill ``jobs`` with the next batch: at least one job, more while under the span cap and the wait."""
        first, writer.carry = writer.carry, None
        jobs.append(first if first is not None else await self._queue.get())
        count = len(jobs[0].spans)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch_spans:
            if self._queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            else:
                job = self._queue.get_nowait()
            if count + len(job.spans) > self.max_batch_spans:
                writer.carry = job  # too big to join: first of the next batch
                break
            jobs.append(job)
            count += len(job.spans)

    async def _write(self, jobs: list[_Job]) -> None:
        groups: dict[str, list[_Job]] = defaultdict(list)
        for job in jobs:
            groups[job.experiment_id].append(job)
        for experiment_id, group in groups.items():
            await self._write_group(experiment_id, group)

    async def _write_group(self, experiment_id: str, group: list[_Job]) -> None:
        """One ``log_spans`` call for the group; if one request's data fails it, one call per request."""
        try:
            await self._call(experiment_id, [s for job in group for s in job.spans])
        except _DATA_ERRORS as exc:
            if len(group) == 1:
                _fail(group[0], exc)
                return
            for job in group:
                try:
                    _succeed(job, await self._call(experiment_id, job.spans))
                except StoreError as one:
                    _fail(job, one)
        except StoreError as exc:
            for job in group:
                _fail(job, exc)
        else:
            for job in group:
                _succeed(job, len(job.spans))

    async def _call(self, experiment_id: str, spans: Sequence[Span]) -> int:
        started = time.perf_counter()
        try:
            return await self._log_spans(experiment_id, spans)
        finally:  # every call is a transaction, committed or not
            self._observer.on_batch(len(spans), time.perf_counter() - started)


def _retrieve(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()


def _succeed(job: _Job, written: int) -> None:
    if not job.future.done():
        job.future.set_result(written)


def _fail(job: _Job, exc: BaseException) -> None:
    if not job.future.done():
        job.future.set_exception(exc)
