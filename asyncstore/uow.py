"""The unit of work: one transaction per call, translated errors, bounded retry.

Every repository call runs its statements through :meth:`UnitOfWork.run` (or the
:meth:`UnitOfWork.transaction` context manager): the transaction commits when the
body returns and rolls back on any error. Driver exceptions become
:class:`~asyncstore.errors.StoreError` subclasses here, once, chained with
``from exc``.

Cancellation: if the caller's task is cancelled at any await, the transaction is
rolled back, or, on a server connection whose protocol state is unknown after an
interrupted round trip, the connection is discarded (the server rolls back on
disconnect). The clean-up itself cannot be interrupted by a second cancellation, so
no connection is left checked out or half-closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeGuard, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from asyncstore.config import Backend
from asyncstore.engines import EngineState, engine_state
from asyncstore.errors import ErrorCode, InternalError, StoreError, TemporarilyUnavailable
from asyncstore.replicas import ReadRouter
from asyncstore.retry import Backoff, retrying
from asyncstore.translate import classify, is_connect_failure, is_database_error, leaves_connection_broken, translate

T = TypeVar("T")
I = TypeVar("I")
I_contra = TypeVar("I_contra", contravariant=True)
log = logging.getLogger(__name__)

# The first retry waits about 40 ms (a deadlock victim usually wins on the next try),
# doubling up to 1 s; jittered so that the victims of one deadlock do not retry in step.
_BACKOFF = Backoff(base=0.04, cap=1.0, jitter=True)


class UnitOfWork:
    """Runs callables in transactions on one engine.

    Args:
        engine: an engine from :func:`asyncstore.engines.get_engine`.
    """

    def __init__(self, engine: AsyncEngine, reads: ReadRouter | None = None) -> None:
        self.engine = engine
        self.reads = reads
        """Where read-only transactions go when the store has replicas (:mod:`asyncstore.replicas`)."""
        self.state: EngineState = engine_state(engine)
        self.backend: Backend = self.state.backend

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, write: bool = True, messages: Mapping[ErrorCode, str] | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """Open a connection and a transaction; commit on success, roll back on error.

        No retry: use :meth:`run` for that.

        Args:
            write: whether the transaction writes (on SQLite it then takes the write
                lock when it begins).
            messages: per-code messages for errors the database raises.
        """
        try:
            async with self._transaction(write) as conn:
                yield conn
        except StoreError:
            raise
        except Exception as exc:
            raise _store_error(exc, messages) from exc

    async def run(
        self,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        *,
        write: bool = True,
        idempotent: bool = False,
        messages: Mapping[ErrorCode, str] | None = None,
    ) -> T:
        """Run ``fn(conn)`` in one transaction, retrying transient failures where safe.

        A transient failure (deadlock, serialization failure, lock wait time-out, a
        connection that died) before COMMIT was sent rolled everything back, so the
        whole transaction is run again, at most ``transaction_retries`` times with
        jittered exponential backoff. A failure during COMMIT leaves the outcome
        unknown; it is retried only when running the call twice has the same effect
        as once: a read-only call (``write=False``) always, a write when the caller
        says ``idempotent=True`` (e.g. upserts); or when the server's answer to the
        COMMIT says it rolled the transaction back (a Galera certification failure).

        A ``StoreError`` that ``fn`` raises on purpose rolls back and propagates as it
        is; a database error (driver or SQLAlchemy) is translated into one; any other
        exception (a bug, a row that cannot be decoded) becomes :class:`InternalError`
        saying so, with the original as ``__cause__``: no bare exception reaches a caller.

        Raises:
            StoreError: the translated error once retries are exhausted or not allowed.
        """
        # Whether running the call again is harmless even if the failed attempt's COMMIT
        # took effect: a read-only call, or an idempotent write.
        replay_safe = idempotent or not write
        progress = _Progress()

        async def attempt() -> T:
            progress.reset()
            async with self._transaction(write, progress) as conn:
                result = await fn(conn)
                progress.committing = True  # leaving the block sends COMMIT
            return result

        def log_retry(exc: Exception, retry: int, delay: float) -> None:
            found = classify(exc)
            log.info("transient failure (%s); retry %d of %d in %.3fs", found and found.detail, retry, retries, delay)

        budget = self.state.config.transaction_retries
        retries = budget + (GALERA_CONFLICT_RETRIES if self.state.galera is not None else 0)
        others = 0

        def should_retry(exc: Exception) -> bool:
            # On a Galera node, conflicts with writes through other nodes (certification
            # failures) have retries of their own; everything else keeps the setting's.
            nonlocal others
            if not progress.may_retry(exc, replay_safe=replay_safe):
                return False
            if self.state.galera is not None and _rolled_back(exc):
                return True
            others += 1
            return others <= budget

        try:
            return await retrying(
                attempt, retries=retries, backoff=_BACKOFF, should_retry=should_retry, on_retry=log_retry
            )
        except StoreError:
            raise  # raised on purpose (NotFound, InvalidParameter, ...), or translated already
        except Exception as exc:
            raise _store_error(exc, messages) from exc

    async def run_grouped(
        self,
        write: GroupedWrite[I, T],
        item: I,
        *,
        idempotent: bool = False,
        messages: Mapping[ErrorCode, str] | None = None,
    ) -> T:
        """Run ``write(conn, [item])`` like :meth:`run`; on SQLite, together with the items queued beside it.

        On a SQLite file every write waits for the process's write lock, and each of
        its statements waits its turn in the event loop, which under load costs more
        than the statement. Items that arrive while others are being written queue up;
        one writer task hands everything queued (at most :data:`GROUP_MAX` items) to
        ``write`` at once, in one transaction, so that a group of calls costs the
        statements of one (group commit).

        Each item keeps its own outcome: ``write`` returns one per item, in order,
        either its result or the ``StoreError`` of a check it failed (its run is
        deleted, a param differs), and an item that failed a check wrote nothing. Any
        exception ``write`` raises rolls the group back and every item in it is run
        again alone, through :meth:`run` with its retry rules, so one bad item costs
        the others time, not their outcome. A result is returned only after the COMMIT
        that made it durable. A caller cancelled while its item waits in the queue
        takes it out; one cancelled while its group is being written leaves the item
        to commit whole.

        Server databases write in parallel and in-memory SQLite has one connection:
        there every call is a group of one.
        """
        state = self.state
        if state.write_lock is None or state.serialize_all:
            one = functools.partial(_write_one, write, item)
            return _outcome(await self.run(one, idempotent=idempotent, messages=messages))
        queued: _Queued[I, T] = _Queued(write, item, idempotent, messages, asyncio.get_running_loop().create_future())
        state.write_queue.append(queued)
        if state.writer is None or state.writer.done():
            state.writer = asyncio.ensure_future(self._write_groups())
        return await queued.result

    async def _write_groups(self) -> None:
        """The writer task: write the queued items, group by group, until none is left."""
        queue = self.state.write_queue
        while queue:
            write = queue[0].write
            group: list[_Queued[Any, Any]] = []
            while queue and len(group) < GROUP_MAX and queue[0].write == write:
                queued = queue.popleft()
                if not queued.result.done():  # a cancelled caller's item is dropped
                    group.append(queued)
            if not group:
                continue
            try:
                await self._write_group(group)
            except BaseException as exc:  # a bug, or the loop is closing: never strand the callers
                failure = exc if isinstance(exc, Exception) else TemporarilyUnavailable("the store's writer was stopped")
                for queued in group:
                    queued.settle(failure)
                raise

    async def _write_group(self, group: list[_Queued[Any, Any]]) -> None:
        write = group[0].write
        if len(group) > 1:
            try:
                outcomes = await self.run(
                    lambda conn: write(conn, [queued.item for queued in group]),
                    idempotent=all(queued.idempotent for queued in group),
                )
            except Exception:
                log.debug("a group of %d writes failed; writing each alone", len(group), exc_info=True)
            else:
                for queued, settled in zip(group, outcomes, strict=True):
                    queued.settle(settled)
                return
        for queued in group:
            if queued.result.done():
                continue
            outcome: Any
            try:
                [outcome] = await self.run(
                    functools.partial(_write_one, write, queued.item),
                    idempotent=queued.idempotent,
                    messages=queued.messages,
                )
            except Exception as exc:
                outcome = exc
            queued.settle(outcome)

    @contextlib.asynccontextmanager
    async def _transaction(self, write: bool, progress: _Progress | None = None) -> AsyncIterator[AsyncConnection]:
        """The transaction itself, errors untranslated."""
        async with self._guard(write):
            conn = None if write or self.reads is None else await self.reads.connect()
            if conn is None:
                conn = await self.engine.connect()
            if progress is not None:
                progress.connected = True
            try:
                await self._begin(conn, write)
                yield conn
                await conn.commit()
            except BaseException as exc:
                await _uncancellable(self._abandon(conn, exc))
                if self.reads is not None and conn.engine is not self.engine and _transient(exc):
                    self.reads.failed(conn.engine, exc)  # the retry reads elsewhere
                raise
            finally:
                await _uncancellable(conn.close())

    @contextlib.asynccontextmanager
    async def _guard(self, write: bool) -> AsyncIterator[None]:
        """SQLite: hold the process's write lock (every transaction's, in memory).

        Waiting for it is bounded by ``pool_timeout``, like waiting for a pooled
        connection, so a stuck writer makes the others fail with
        TEMPORARILY_UNAVAILABLE instead of hanging.
        """
        lock = self.state.write_lock
        if lock is None or not (write or self.state.serialize_all):
            yield
            return
        if lock.locked():
            timeout = self.state.config.pool_timeout
            try:
                await asyncio.wait_for(lock.acquire(), timeout=timeout)
            except asyncio.TimeoutError:
                raise TemporarilyUnavailable(
                    f"waited {timeout:g}s (pool_timeout) for the SQLite write lock held by another "
                    "transaction of this process; try again, or raise pool_timeout"
                ) from None
        else:
            await lock.acquire()  # free: taken at once, no suspension
        try:
            yield
        finally:
            lock.release()

    async def _begin(self, conn: AsyncConnection, write: bool) -> None:
        if self.backend is Backend.SQLITE:
            await conn.execution_options(asyncstore_sqlite_begin="IMMEDIATE" if write else "DEFERRED")
        await conn.begin()

    async def _abandon(self, conn: AsyncConnection, exc: BaseException) -> None:
        """Roll back after ``exc``; discard the connection if it cannot be trusted."""
        interrupted = not isinstance(exc, Exception)  # cancelled mid-round-trip
        if (interrupted and self.backend is not Backend.SQLITE) or leaves_connection_broken(exc):
            # The driver may be half-way through a protocol exchange: do not reuse it.
            # (aiosqlite finishes each call in its thread, so SQLite can roll back.)
            await conn.invalidate()
            return
        if conn.invalidated:
            return
        try:
            await conn.rollback()
        except Exception:
            log.debug("rollback failed; discarding the connection", exc_info=True)
            if not self.state.serialize_all:  # never drop the only in-memory database
                await conn.invalidate()


GALERA_CONFLICT_RETRIES = 10
"""On a Galera node, retries of a transaction that conflicted with writes through other
nodes, on top of ``transaction_retries``: writers of the same rows through different
nodes conflict at every COMMIT that overlaps, so they need more turns than a deadlock
on one server does (each waits a jittered, doubling backoff, capped at 1 s)."""

GROUP_MAX = 64
"""Most items one group commit of :meth:`UnitOfWork.run_grouped` writes."""


class GroupedWrite(Protocol[I_contra, T]):
    """A write that takes a list of items and returns one outcome per item (see :meth:`UnitOfWork.run_grouped`)."""

    def __call__(self, conn: AsyncConnection, items: Sequence[I_contra], /) -> Awaitable[list[T | StoreError]]: ...


def _write_one(write: GroupedWrite[I, T], item: I, conn: AsyncConnection) -> Awaitable[list[T | StoreError]]:
    """``write`` of one item (a group of one)."""
    return write(conn, [item])


def _outcome(outcomes: list[T | StoreError]) -> T:
    """The result of a group of one, or its error raised."""
    [outcome] = outcomes
    if isinstance(outcome, StoreError):
        raise outcome
    return outcome


class _Queued(Generic[I, T]):
    """An item of :meth:`UnitOfWork.run_grouped` waiting for its group, and its caller's future."""

    __slots__ = ("idempotent", "item", "messages", "result", "write")

    def __init__(
        self,
        write: GroupedWrite[I, T],
        item: I,
        idempotent: bool,
        messages: Mapping[ErrorCode, str] | None,
        result: asyncio.Future[T],
    ) -> None:
        self.write = write
        self.item = item
        self.idempotent = idempotent
        self.messages = messages
        self.result = result

    def settle(self, outcome: T | Exception) -> None:
        """Hand the item's result or error to its caller (unless the caller is gone)."""
        if self.result.done():
            return
        if isinstance(outcome, Exception):
            self.result.set_exception(outcome)
        else:
            self.result.set_result(outcome)


class _Progress:
    """How far one attempt of :meth:`UnitOfWork.run` got (decides whether to retry)."""

    __slots__ = ("committing", "connected")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new attempt: not connected, not committing."""
        self.connected = False
        self.committing = False

    def may_retry(self, exc: Exception, *, replay_safe: bool) -> bool:
        """Whether the attempt that raised ``exc`` may be run again.

        Only a transient database failure; before the connection was handed over,
        unless connecting itself failed (the engine already retried that, with its
        own backoff), so a connection that died while it was being set up is replaced;
        after, before COMMIT was sent unless the call is ``replay_safe`` (the outcome
        of an interrupted COMMIT is unknown: running a write again could duplicate it),
        or unless the server answered the COMMIT saying it rolled the transaction back
        (a Galera certification failure, reported as a deadlock): nothing took effect.
        """
        found = classify(exc) if is_database_error(exc) else None
        if found is None or not found.retryable:
            return False
        if not self.connected:
            return not is_connect_failure(exc)  # nothing was sent yet
        return replay_safe or not self.committing or found.rolled_back


def _store_error(exc: Exception, messages: Mapping[ErrorCode, str] | None) -> StoreError:
    """The ``StoreError`` a caller gets for ``exc``, which is not one: a database error
    translated, anything else an :class:`InternalError` that names it as a bug."""
    if is_database_error(exc):
        return translate(exc, messages)
    detail = str(exc)
    if len(detail) > 300:
        detail = detail[:300] + "…"
    return InternalError(
        f"unexpected error inside asyncstore ({type(exc).__name__}: {detail}); this is a bug, please report it"
    )


def _rolled_back(exc: Exception) -> bool:
    """Whether the server rolled the transaction back whole (a deadlock or certification failure)."""
    found = classify(exc)
    return found is not None and found.rolled_back


def _transient(exc: BaseException) -> TypeGuard[Exception]:
    """Whether ``exc`` is a transient database failure (a lost connection, a conflict)."""
    if not isinstance(exc, Exception) or not is_database_error(exc):
        return False
    found = classify(exc)
    return found is not None and found.retryable


async def _uncancellable(aw: Awaitable[None]) -> None:
    """Await clean-up to its end even if the calling task is cancelled meanwhile.

    A cancellation that arrives during the clean-up is delivered once it is done.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    exc = task.exception() if not task.cancelled() else None
    if exc is not None:
        log.debug("clean-up failed", exc_info=exc)
    if cancelled:
        raise asyncio.CancelledError


__all__ = ["TemporarilyUnavailable", "UnitOfWork"]
