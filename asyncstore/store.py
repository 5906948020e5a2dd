"""``AsyncStore``: an engine plus the repositories, with an open/close lifecycle."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from asyncstore import migrate
from asyncstore.config import Backend, StoreConfig
from asyncstore.dialect import galera_node
from asyncstore.engines import create_engine, engine_state
from asyncstore.jobs import JobRepository
from asyncstore.replicas import ReadRouter, ReplicaStatus, primary_scope
from asyncstore.tracing import SpanRepository, TraceRepository
from asyncstore.tracking import ExperimentRepository, RunRepository
from asyncstore.uow import UnitOfWork


class AsyncStore:
    """The store: owns one engine and hands out the repositories that use it.

    Open it with :meth:`open`, as an async context manager (or ``await`` it and call
    :meth:`close` yourself)::

        async with AsyncStore.open("sqlite:///mlruns.db") as store:
            exp_id = await store.experiments.create("demo")

    With read replicas (``replicas=[…]``, ``ASYNCSTORE_REPLICA_URIS``), read-only calls
    go to the replicas and the rest to the primary (:mod:`asyncstore.replicas`);
    :meth:`primary` makes reads see the caller's own writes.

    Attributes:
        experiments, runs, traces, spans, jobs: the repositories.
        engine: the SQLAlchemy ``AsyncEngine`` of the primary (``engine.sync_engine`` is underneath).
        config: the validated :class:`StoreConfig`.
    """

    def __init__(self, engine: AsyncEngine, config: StoreConfig, replicas: Sequence[AsyncEngine] = ()) -> None:
        self.engine = engine
        self.config = config
        self._reads = ReadRouter(replicas, config) if replicas else None
        self.uow = UnitOfWork(engine, self._reads)
        self.experiments = ExperimentRepository(self.uow)
        self.runs = RunRepository(self.uow)
        self.traces = TraceRepository(self.uow)
        self.spans = SpanRepository(self.uow)
        self.jobs = JobRepository(self.uow)
        self._closed = False

    @property
    def backend(self) -> Backend:
        """The database family this store runs on."""
        return self.config.backend

    @classmethod
    def open(cls, uri: str | URL | None = None, *, upgrade: bool = False, **options: Any) -> _Opening:
        """Open a store on ``uri`` (default: ``ASYNCSTORE_DATABASE_URI`` or ``sqlite:///asyncstore.db``).

        An empty database gets the schema. A database at an older revision raises
        SCHEMA_OUT_OF_DATE unless ``upgrade=True``, which migrates it (under the
        migration lock, so concurrent openers migrate once); before raising, the opener
        waits for an upgrade another process may be running (it may be looking at that
        upgrade half-way), and opens the database if it is then at head.

        Args:
            uri: the database URI.
            upgrade: migrate an out-of-date database instead of refusing it.
            **options: pool and retry options, see :class:`StoreConfig`.
        """
        return _Opening(cls, StoreConfig.load(uri, **options), upgrade)

    def primary(self) -> contextlib.AbstractContextManager[None]:
        """A scope in which reads go to the primary, so they see the caller's own writes::

            await store.runs.log_batch(run_id, metrics=metrics)
            with store.primary():
                run = await store.runs.get(run_id)  # has the metrics just logged

        Tasks started inside the scope inherit it. Without replicas it changes nothing.
        """
        return primary_scope()

    def replica_status(self) -> list[ReplicaStatus]:
        """Each replica's state (serving, lagging, down, unchecked), lag at its last check,
        and the reads it has served; empty without replicas."""
        return [] if self._reads is None else self._reads.status()

    async def close(self) -> None:
        """Dispose the engines and their connections. Safe to call twice."""
        if not self._closed:
            self._closed = True
            await _dispose([self.engine, *([] if self._reads is None else self._reads.engines)])

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncStore {self.config.safe_uri} ({state})>"

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(
                f"AsyncStore for {self.config.safe_uri} was never closed; use "
                "`async with AsyncStore.open(...)` or `await store.close()`",
                ResourceWarning,
                stacklevel=2,
            )


async def _dispose(engines: Sequence[AsyncEngine]) -> None:
    for engine in engines:
        await engine.dispose()


class _Opening:
    """What :meth:`AsyncStore.open` returns: ``await`` it, or use it in ``async with``."""

    def __init__(self, cls: type[AsyncStore], config: StoreConfig, upgrade: bool) -> None:
        self._cls, self._config, self._upgrade = cls, config, upgrade
        self._store: AsyncStore | None = None

    async def _open(self) -> AsyncStore:
        config = self._config
        engine = create_engine(config)
        # Replicas are not connected to here: one that is down must not stop the store
        # from opening (its reads go to the primary until it answers).
        replicas = [create_engine(config.replica(uri)) for uri in config.replicas]
        try:
            found = await migrate.inspect_database(engine)
            if found.kind is migrate.Kind.EMPTY or (self._upgrade and found.kind is migrate.Kind.ASYNCSTORE):
                await migrate.upgrade(engine)
            elif found.kind is migrate.Kind.ASYNCSTORE and not found.served:
                # Perhaps another process's upgrade, half-way: let it end, then look again.
                await migrate.wait_for_upgrades(engine)
            await migrate.verify(engine)
            if config.backend is Backend.MYSQL:
                async with engine.connect() as conn:
                    engine_state(engine).galera = await galera_node(conn)
        except BaseException:
            await _dispose([engine, *replicas])
            raise
        return self._cls(engine, config, replicas)

    def __await__(self) -> Generator[Any, None, AsyncStore]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncStore:
        self._store = await self._open()
        return self._store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._store is not None:
            await self._store.close()
