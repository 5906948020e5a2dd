"""The runs repository: runs, params, metrics, latest metrics, tags, batch logging, search.

Semantics follow MLflow's SQL tracking store (limits, immutable params, NaN/inf
metrics through ``is_nan``, ``latest_metrics`` ordered by (step, timestamp, value)).
Every write to a run first locks the run row (``SELECT ... FOR UPDATE``; SQLite
has one writer anyway), then touches params, metrics, latest metrics and tags in
that order and in sorted key order, so concurrent writers queue instead of
deadlocking. A batch costs a fixed number of statements, whatever its size.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore import dialect as d
from asyncstore import filters as f
from asyncstore import rules as t
from asyncstore.conditions import check_view
from asyncstore.entities import (
    LifecycleStage,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunMetric,
    RunStatus,
    RunTag,
    ViewType,
)
from asyncstore.errors import InvalidState, NotFound, StoreError
from asyncstore.paging import (
    Page,
    decode_offset,
    decode_token,
    encode_token,
    fingerprint,
)
from asyncstore.schema import (
    ARTIFACT_URI_MAX,
    RUN_NAME_MAX,
    TAG_VALUE_MAX,
    USER_ID_MAX,
    experiments,
    runs,
)
from asyncstore.schema import metrics as metric_table
from asyncstore.schema import tags as run_tags
from asyncstore.tracking.batch import RUN_NAME_TAG, USER_TAG, Batch
from asyncstore.tracking.ingest import stored_params, write_batches
from asyncstore.tracking.search import load_run_data, run_info, search_query
from asyncstore.uow import UnitOfWork

MAX_HISTORY_RESULTS = 50_000
MAX_BULK_RUN_IDS = 100
"""MLflow's limit on the runs of one get_metric_history_bulk call."""

_ADJECTIVES = ("amber", "bold", "brave", "calm", "clever", "crisp", "eager", "gentle", "keen", "lively",
               "lucky", "merry", "nimble", "polite", "quiet", "rapid", "silent", "smart", "sunny", "witty")
_NOUNS = ("badger", "crane", "dolphin", "falcon", "fox", "hare", "heron", "lark", "lynx", "mole",
          "newt", "otter", "owl", "panda", "robin", "seal", "swan", "tiger", "wolf", "wren")


def generate_run_name() -> str:
    """A readable random run name such as ``brave-otter-417`` (MLflow style)."""
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_NOUNS)}-{random.randint(0, 999)}"


class RunRepository:
    """Async repository for runs (``store.runs``).

    Example::

        run = await store.runs.create(exp_id, run_name="baseline")
        await store.runs.log_batch(run.run_id, metrics=[Metric("loss", 0.3, now_ms, step=1)],
                                   params=[Param("lr", "0.01")])
        found = await store.runs.search([exp_id], "metrics.loss < 0.5", order_by=["metrics.loss"])
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    # --- runs -----------------------------------------------------------------------

    async def create(
        self,
        experiment_id: str | int,
        run_name: str | None = None,
        start_time: int | None = None,
        tags: Iterable[RunTag] | Mapping[str, str] = (),
        user_id: str | None = None,
    ) -> Run:
        """Create a RUNNING run in an active experiment.

        Args:
            experiment_id: the experiment.
            run_name: up to 250 characters; a readable name is generated when None.
            start_time: epoch ms; now when None.
            tags: initial tags (RunTag objects or a mapping).
            user_id: who runs it; when None, the ``mlflow.user`` tag, else
                ``"unknown"`` (what MLflow's client stores; MLflow cannot read a run
                whose user is NULL).

        Raises:
            NotFound: no such experiment. InvalidState: the experiment is deleted.
            InvalidParameter: a bad argument, or run_name and an ``mlflow.runName``
                tag that disagree.
        """
        exp_id = t.experiment_id_of(experiment_id)
        pairs = t.tag_pairs("tag", tags, TAG_VALUE_MAX)
        run_name = t.check_string("run_name", run_name, RUN_NAME_MAX)
        tagged = pairs.get(RUN_NAME_TAG)
        if run_name is not None and tagged is not None and tagged != run_name:
            t.invalid(f"run_name {run_name!r} and the {RUN_NAME_TAG} tag {tagged!r} differ; give one of them")
        run_name = run_name or tagged or generate_run_name()
        t.check_string("run_name", run_name, RUN_NAME_MAX)
        pairs[RUN_NAME_TAG] = run_name
        start = t.check_int("start_time", start_time, allow_none=True)
        user = t.check_string("user_id", user_id, USER_ID_MAX)
        if user is None:
            user = t.check_string("user_id (the mlflow.user tag)", pairs.get(USER_TAG, "unknown"), USER_ID_MAX)

        async def fn(conn: AsyncConnection) -> Run:
            run_id = uuid.uuid4().hex
            row = (
                await conn.execute(
                    select(experiments.c.lifecycle_stage, experiments.c.artifact_location)
                    .where(experiments.c.experiment_id == exp_id)
                    .with_for_update(read=True)  # a concurrent delete of the experiment waits
                )
            ).first()
            if row is None:
                raise NotFound(f"no experiment with id {exp_id}")
            if row.lifecycle_stage != LifecycleStage.ACTIVE.value:
                raise InvalidState(f"experiment {exp_id} is deleted; restore it before creating runs in it")
            artifact_uri = f"{row.artifact_location.rstrip('/')}/{run_id}/artifacts" if row.artifact_location else None
            if artifact_uri is not None and len(artifact_uri) > ARTIFACT_URI_MAX:
                t.invalid(
                    f"the run's artifact URI would be {len(artifact_uri)} characters long (limit {ARTIFACT_URI_MAX}); "
                    f"give experiment {exp_id} a shorter artifact_location"
                )
            values = {
                "run_uuid": run_id, "name": run_name, "experiment_id": exp_id, "user_id": user,
                "status": RunStatus.RUNNING.value, "start_time": start if start is not None else t.now_ms(),
                "end_time": None, "deleted_time": None, "lifecycle_stage": LifecycleStage.ACTIVE.value,
                "artifact_uri": artifact_uri, "source_type": "UNKNOWN", "source_name": "",
                "entry_point_name": "", "source_version": "",
            }
            await conn.execute(insert(runs).values(**values))
            await conn.execute(
                insert(run_tags), [{"run_uuid": run_id, "key": k, "value": v} for k, v in sorted(pairs.items())]
            )
            info = run_info(SimpleNamespace(**values))
            return Run(info, RunData(tags=dict(pairs)))

        return await self._uow.run(fn)

    async def get(self, run_id: str) -> Run:
        """Return a run with its latest metrics, params and tags (two queries).

        Raises:
            NotFound: no such run.
        """
        run_id = t.run_id_of(run_id)

        async def fn(conn: AsyncConnection) -> Run:
            row = (await conn.execute(select(runs).where(runs.c.run_uuid == run_id))).first()
            if row is None:
                raise NotFound(f"no run with id {run_id!r}")
            data = await load_run_data(conn, self._uow.backend, [run_id])
            return Run(run_info(row), data[run_id])

        return await self._uow.run(fn, write=False)

    async def update(
        self, run_id: str, status: RunStatus | str | None = None, end_time: int | None = None,
        run_name: str | None = None,
    ) -> RunInfo:
        """Update an active run's status, end time and/or name; return the new info.

        Raises:
            NotFound: no such run. InvalidState: the run or its experiment is deleted.
            InvalidParameter: an unknown status or a bad value.
        """
        run_id = t.run_id_of(run_id)
        values: dict[str, Any] = {}
        if status is not None:
            try:
                values["status"] = RunStatus(status).value
            except ValueError:
                t.invalid(f"status {status!r} is not valid; use one of {', '.join(s.value for s in RunStatus)}")
        if end_time is not None:
            values["end_time"] = t.check_int("end_time", end_time)
        if run_name is not None:
            values["name"] = t.check_string("run_name", run_name, RUN_NAME_MAX)
        backend = self._uow.backend

        async def fn(conn: AsyncConnection) -> RunInfo:
            await self._lock_active(conn, run_id, "update")
            if values:
                await conn.execute(update(runs).where(runs.c.run_uuid == run_id).values(**values))
            if run_name is not None:
                await conn.execute(
                    d.upsert(backend, run_tags, ("key", "run_uuid"), ("value",)),
                    [{"run_uuid": run_id, "key": RUN_NAME_TAG, "value": run_name}],
                )
            row = (await conn.execute(select(runs).where(runs.c.run_uuid == run_id))).one()
            return run_info(row)

        return await self._uow.run(fn, idempotent=True)

    async def delete(self, run_id: str) -> None:
        """Soft-delete a run (lifecycle_stage ``deleted``, deleted_time now). Deleting twice is harmless.

        Raises:
            NotFound: no such run.
        """
        await self._set_stage(run_id, LifecycleStage.DELETED)

    async def restore(self, run_id: str) -> None:
        """Restore a deleted run. Restoring an active run is harmless.

        Raises:
            NotFound: no such run. InvalidState: its experiment is deleted.
        """
        await self._set_stage(run_id, LifecycleStage.ACTIVE)

    async def _set_stage(self, run_id: str, stage: LifecycleStage) -> None:
        run_id = t.run_id_of(run_id)

        async def fn(conn: AsyncConnection) -> None:
            row = await self._lock(conn, run_id)
            if stage is LifecycleStage.ACTIVE and row.experiment_stage != LifecycleStage.ACTIVE.value:
                raise InvalidState(f"cannot restore run {run_id}: its experiment is deleted; restore the experiment")
            if row.lifecycle_stage == stage.value:
                return
            deleted_time = t.now_ms() if stage is LifecycleStage.DELETED else None
            await conn.execute(
                update(runs).where(runs.c.run_uuid == run_id)
                .values(lifecycle_stage=stage.value, deleted_time=deleted_time)
            )

        await self._uow.run(fn)

    async def _lock(self, conn: AsyncConnection, run_id: str) -> Any:
        """Lock the run row (not the experiment's) and read both lifecycle stages."""
        row = (await self._lock_runs(conn, [run_id])).get(run_id)
        if row is None:
            raise NotFound(f"no run with id {run_id!r}")
        return row

    async def _lock_active(self, conn: AsyncConnection, run_id: str, action: str) -> None:
        row = await self._lock(conn, run_id)
        _check_active(run_id, row, action)

    async def _lock_runs(self, conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, Any]:
        """Lock run rows (in id order) and read both lifecycle stages of each, by run id (missing ones left out)."""
        found = await conn.execute(
            select(runs.c.run_uuid, runs.c.lifecycle_stage, _experiment_stage().label("experiment_stage"))
            .where(runs.c.run_uuid.in_(run_ids))
            .order_by(runs.c.run_uuid)
            .with_for_update()
        )
        return {row.run_uuid: row for row in found}

    # --- params, metrics, tags --------------------------------------------------------

    async def log_param(self, run_id: str, key: str, value: str) -> None:
        """Log one param (immutable: the same value again is fine, another is INVALID_PARAMETER)."""
        await self.log_batch(run_id, params=[Param(key, value)])

    async def log_metric(
        self, run_id: str, key: str, value: float, timestamp: int | None = None, step: int = 0
    ) -> None:
        """Log one metric measurement (timestamp: epoch ms, now when None)."""
        await self.log_batch(run_id, metrics=[Metric(key, value, t.now_ms() if timestamp is None else timestamp, step)])

    async def set_tag(self, run_id: str, key: str, value: str) -> None:
        """Set a run tag (``mlflow.runName`` also renames the run)."""
        await self.log_batch(run_id, tags=[RunTag(key, value)])

    async def delete_tag(self, run_id: str, key: str) -> None:
        """Delete a tag of an active run.

        Raises:
            NotFound: no such run, or it has no tag ``key``. InvalidState: the run is deleted.
        """
        run_id = t.run_id_of(run_id)
        key = t.check_key("tag", key)

        async def fn(conn: AsyncConnection) -> None:
            await self._lock_active(conn, run_id, "delete a tag of")
            result = await conn.execute(delete(run_tags).where(run_tags.c.run_uuid == run_id, run_tags.c.key == key))
            if result.rowcount == 0:
                raise NotFound(f"run {run_id} has no tag {key!r}")

        await self._uow.run(fn)

    async def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        """Log metrics, params and tags to an active run, all or nothing.

        Limits (MLflow's): 1000 metrics, 100 params, 100 tags; keys up to 250
        characters, param values up to 6000, tag values up to 8000. Everything is
        validated before anything is written. The batch costs at most eight
        statements, whatever its size.

        Raises:
            NotFound: no such run. InvalidState: the run or its experiment is deleted.
            InvalidParameter: a limit is exceeded, a value is malformed, or a param
                was logged before with a different value.
        """
        run_id = t.run_id_of(run_id)
        batch = Batch.validate(run_id, metrics, params, tags)
        if batch.empty:
            await self._uow.run(lambda conn: self._lock_active(conn, run_id, "log to"), write=False)
            return
        await self._uow.run_grouped(self._write_batches, (run_id, batch), idempotent=True)

    async def _write_batches(self, conn: AsyncConnection, items: Sequence[tuple[str, Batch]]) -> list[StoreError | None]:
        """Write log_batch calls in one transaction: one call, or a SQLite group commit's.

        Each call is checked first, in call order: its run exists and is active, and
        its params were not logged before, by an earlier call in the group included,
        with other values. A call that fails a check gets its error and writes
        nothing; the others are written together (:func:`write_batches`).
        """
        stages = await self._lock_runs(conn, sorted({run_id for run_id, _ in items}))
        stored = await stored_params(conn, items)
        logged = dict(stored)
        outcomes: list[StoreError | None] = []
        ok: list[tuple[str, Batch]] = []
        for run_id, batch in items:
            try:
                _check_active(run_id, stages.get(run_id), "log to")
                for key, value in sorted(batch.params.items()):
                    old = logged.get((run_id, key))
                    if old is not None and old != value:
                        t.invalid(
                            f"param {key!r} of run {run_id} was logged with value {old!r}; params are immutable, "
                            f"so the new value {value!r} is refused"
                        )
            except StoreError as exc:
                outcomes.append(exc)
                continue
            logged.update(((run_id, key), value) for key, value in batch.params.items())
            outcomes.append(None)
            ok.append((run_id, batch))
        if ok:
            await write_batches(conn, self._uow.backend, ok, stored)
        return outcomes

    # --- metric history -------------------------------------------------------------------

    async def get_metric_history(
        self, run_id: str, key: str, max_results: int | None = None, page_token: str | None = None
    ) -> Page[Metric]:
        """Every measurement of one metric of a run, ordered by (step, timestamp).

        Args:
            run_id: the run.
            key: the metric key.
            max_results: page size (1-50000); None returns everything in one page.
            page_token: ``next_page_token`` of the previous page.

        Raises:
            NotFound: no such run. InvalidParameter: a bad argument or token.
        """
        run_id = t.run_id_of(run_id)
        key = t.check_key("metric", key)
        limit = None if max_results is None else t.check_max_results(max_results, limit=MAX_HISTORY_RESULTS)
        query_id = fingerprint("metric_history", run_id, key)
        after = None
        if page_token is not None:
            position = decode_token(page_token, query_id)
            after = _history_position(position)
        m = metric_table.c
        order = (m.step, m.timestamp, m.value, m.is_nan)
        query = select(m.key, m.value, m.timestamp, m.step, m.is_nan).where(m.run_uuid == run_id, m.key == key)
        if after is not None:
            query = query.where(tuple_(*order) > tuple_(*after))
        query = query.order_by(*order)
        if limit is not None:
            query = query.limit(limit + 1)

        async def fn(conn: AsyncConnection) -> Page[Metric]:
            if (await conn.execute(select(runs.c.run_uuid).where(runs.c.run_uuid == run_id))).first() is None:
                raise NotFound(f"no run with id {run_id!r}")
            rows = list(await conn.execute(query))
            token = None
            if limit is not None and len(rows) > limit:
                rows = rows[:limit]
                last = rows[-1]
                token = encode_token(
                    {"s": last.step, "t": last.timestamp, "v": last.value, "n": bool(last.is_nan)}, query_id
                )
            items = [Metric(r.key, t.decode_metric(r.value, bool(r.is_nan)), r.timestamp, r.step) for r in rows]
            return Page(items, token)

        return await self._uow.run(fn, write=False)

    async def get_metric_history_bulk(
        self, run_ids: Sequence[str], key: str, max_results: int = 25_000
    ) -> list[RunMetric]:
        """One metric's history for up to 100 runs (for plotting them together).

        Ordered by run_id, step, timestamp; at most ``max_results`` measurements in all.

        Raises:
            InvalidParameter: no run ids, more than 100, or a bad key.
        """
        if isinstance(run_ids, str) or not run_ids:
            t.invalid("run_ids must be a non-empty list of run ids")
        if len(run_ids) > MAX_BULK_RUN_IDS:
            t.invalid(f"{len(run_ids)} run ids given; get_metric_history_bulk takes at most {MAX_BULK_RUN_IDS}")
        ids = sorted({t.run_id_of(r) for r in run_ids})
        key = t.check_key("metric", key)
        limit = t.check_max_results(max_results, limit=MAX_HISTORY_RESULTS)
        m = metric_table.c
        query = (
            select(m.run_uuid, m.key, m.value, m.timestamp, m.step, m.is_nan)
            .where(m.run_uuid.in_(ids), m.key == key)
            .order_by(d.sortable(self._uow.backend, m.run_uuid), m.step, m.timestamp, m.value, m.is_nan)
            .limit(limit)
        )

        async def fn(conn: AsyncConnection) -> list[RunMetric]:
            return [
                RunMetric(r.run_uuid, r.key, t.decode_metric(r.value, bool(r.is_nan)), r.timestamp, r.step)
                for r in await conn.execute(query)
            ]

        return await self._uow.run(fn, write=False)

    # --- search ---------------------------------------------------------------------------

    async def search(
        self,
        experiment_ids: Sequence[str | int] | str | int,
        filter_string: str | None = "",
        view: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] = (),
        page_token: str | None = None,
    ) -> Page[Run]:
        """Search runs of some experiments with MLflow's filter and order-by grammar.

        Args:
            experiment_ids: one id or a list of them.
            filter_string: e.g. ``"metrics.acc > 0.9 AND params.model = 'cnn'"``.
            view: ACTIVE_ONLY, DELETED_ONLY or ALL.
            max_results: page size, 1-50000.
            order_by: e.g. ``["metrics.acc DESC", "start_time"]``; missing and NaN
                metric values sort last; ties by start_time DESC, then run_id.
            page_token: ``next_page_token`` of the previous page.

        Raises:
            InvalidParameter: a malformed filter or order_by (the message points at
                the token and says what is allowed), a bad max_results or token.
        """
        if isinstance(experiment_ids, (str, int)):
            experiment_ids = [experiment_ids]
        exp_ids = sorted({t.experiment_id_of(e) for e in experiment_ids})
        view = check_view(view)
        clauses = f.parse_filter(filter_string, f.RUN_GRAMMAR)
        orders = f.parse_order_by(order_by, f.RUN_GRAMMAR)
        max_results = t.check_max_results(max_results)
        query_id = fingerprint("runs", exp_ids, view.value, filter_string or "", list(order_by))
        offset = decode_offset(page_token, query_id)
        query = search_query(self._uow.backend, exp_ids, view, clauses, orders).limit(max_results + 1).offset(offset)

        async def fn(conn: AsyncConnection) -> Page[Run]:
            rows = (await conn.execute(query)).all() if exp_ids else []
            more = len(rows) > max_results
            rows = rows[:max_results]
            data = await load_run_data(conn, self._uow.backend, [r.run_uuid for r in rows])
            token = encode_token({"o": offset + len(rows)}, query_id) if more else None
            return Page([Run(run_info(r), data[r.run_uuid]) for r in rows], token)

        return await self._uow.run(fn, write=False)


def _history_position(position: Mapping[str, Any]) -> tuple[int, int, float, bool]:
    try:
        step, ts, value, is_nan = position["s"], position["t"], position["v"], position["n"]
        if not (isinstance(step, int) and isinstance(ts, int) and isinstance(value, (int, float)) and isinstance(is_nan, bool)):
            raise TypeError
    except (KeyError, TypeError):
        t.invalid("page_token is damaged; pass the next_page_token of a previous page unchanged")
    return step, ts, float(value), is_nan


def _experiment_stage() -> Any:
    """The lifecycle stage of a run's experiment, as a scalar subquery of a runs query."""
    return (
        select(experiments.c.lifecycle_stage)
        .where(experiments.c.experiment_id == runs.c.experiment_id)
        .scalar_subquery()
    )


def _check_active(run_id: str, row: Any, action: str) -> None:
    """Refuse to ``action`` a run that is missing (``row`` None), deleted, or in a deleted experiment."""
    if row is None:
        raise NotFound(f"no run with id {run_id!r}")
    if row.lifecycle_stage != LifecycleStage.ACTIVE.value:
        raise InvalidState(f"cannot {action} run {run_id}: it is deleted; restore it first")
    if row.experiment_stage != LifecycleStage.ACTIVE.value:
        raise InvalidState(f"cannot {action} run {run_id}: its experiment is deleted")


__all__ = ["RunRepository", "generate_run_name"]
