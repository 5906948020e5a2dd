"""The experiments repository: experiments and their tags.

Follows MLflow's SQL tracking store: unique names of up to 500 characters, soft
delete through ``lifecycle_stage`` (the experiment's runs follow it), times in epoch
milliseconds, experiment ids handed out as strings of digits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Row, and_, case, delete, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from asyncstore import dialect as d
from asyncstore import filters as f
from asyncstore import rules as t
from asyncstore.conditions import check_view, clause_comparison, view_condition
from asyncstore.entities import Experiment, ExperimentTag, LifecycleStage, ViewType
from asyncstore.errors import ErrorCode, InvalidState, NotFound
from asyncstore.paging import Page, decode_offset, encode_token, fingerprint
from asyncstore.schema import (
    ARTIFACT_LOCATION_MAX,
    EXPERIMENT_NAME_MAX,
    EXPERIMENT_TAG_VALUE_MAX,
    experiment_tags,
    experiments,
    runs,
)
from asyncstore.uow import UnitOfWork

EXPERIMENT_GRAMMAR = f.Grammar(
    entities=(
        f.EntitySpec(
            "attribute",
            ("attributes", "attribute", "attr"),
            keys={
                "name": f.STRING_KEY,
                "creation_time": f.NUMBER_KEY,
                "last_update_time": f.NUMBER_KEY,
                "experiment_id": f.KeySpec(f.ValueType.STRING, frozenset(), orderable=True),
            },
        ),
        f.EntitySpec("tag", ("tags", "tag"), default=f.KeySpec(f.ValueType.STRING, f.STRING_COMPARATORS, orderable=False)),
    ),
    default_entity="attribute",
)
"""MLflow's ``search_experiments`` grammar: name, times and tags (order by
name, experiment_id, creation_time, last_update_time)."""


def _experiment(row: Row[Any], tags: Mapping[str, str]) -> Experiment:
    return Experiment(
        experiment_id=str(row.experiment_id),
        name=row.name,
        artifact_location=row.artifact_location,
        lifecycle_stage=LifecycleStage(row.lifecycle_stage),
        creation_time=row.creation_time,
        last_update_time=row.last_update_time,
        tags=dict(tags),
    )


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        t.invalid(f"experiment name {name!r} is not valid: expected a non-empty string")
    if len(name) > EXPERIMENT_NAME_MAX:
        t.invalid(f"experiment name is {len(name)} characters long; the limit is {EXPERIMENT_NAME_MAX}")
    return name


class ExperimentRepository:
    """Async repository for experiments (``store.experiments``).

    Example::

        exp_id = await store.experiments.create("demo", tags={"team": "nlp"})
        exp = await store.experiments.get_by_name("demo")
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    @property
    def _workspace(self) -> str:
        """The MLflow workspace of this store's experiments (the ``workspace`` setting)."""
        return self._uow.state.config.workspace

    async def create(
        self, name: str, tags: Mapping[str, str] | Iterable[ExperimentTag] | None = None,
        artifact_location: str | None = None,
    ) -> str:
        """Create an experiment and return its id.

        Args:
            name: unique name, 1-500 characters.
            tags: key -> value (or ExperimentTag objects).
            artifact_location: where its artifacts go; default ``mlflow-artifacts:/<id>``.

        Raises:
            AlreadyExists: an experiment with this name exists (active or deleted).
            InvalidParameter: a bad name, tag or location.
        """
        name = _check_name(name)
        pairs = t.tag_pairs("experiment tag", tags, EXPERIMENT_TAG_VALUE_MAX)
        location = t.check_string("artifact_location", artifact_location, ARTIFACT_LOCATION_MAX)
        backend = self._uow.backend
        workspace = self._workspace

        async def fn(conn: AsyncConnection) -> str:
            now = t.now_ms()
            result = await conn.execute(
                insert(experiments).values(
                    name=name, artifact_location=location, lifecycle_stage=LifecycleStage.ACTIVE.value,
                    creation_time=now, last_update_time=now, workspace=workspace,
                )
            )
            exp_id = int(result.inserted_primary_key[0])  # type: ignore[index]
            if location is None:
                default = f"{t.DEFAULT_ARTIFACT_ROOT}/{exp_id}"
                await conn.execute(
                    update(experiments).where(experiments.c.experiment_id == exp_id).values(artifact_location=default)
                )
            if pairs:
                await conn.execute(
                    d.upsert(backend, experiment_tags, ("key", "experiment_id"), ("value",)),
                    [{"experiment_id": exp_id, "key": k, "value": v} for k, v in sorted(pairs.items())],
                )
            return str(exp_id)

        return await self._uow.run(
            fn, messages={ErrorCode.ALREADY_EXISTS: f"an experiment named {name!r} exists already"}
        )

    async def get(self, experiment_id: str | int) -> Experiment:
        """Return an experiment (active or deleted) with its tags.

        Raises:
            NotFound: no experiment has this id.
        """
        exp_id = t.experiment_id_of(experiment_id)
        return await self._uow.run(
            lambda conn: self._load(conn, experiments.c.experiment_id == exp_id, f"id {exp_id}"), write=False
        )

    async def get_by_name(self, name: str) -> Experiment:
        """Return the experiment with this name (active or deleted).

        Raises:
            NotFound: no experiment has this name.
        """
        name = _check_name(name)
        return await self._uow.run(
            lambda conn: self._load(
                conn,
                and_(experiments.c.name == name, experiments.c.workspace == self._workspace),
                f"name {name!r}",
            ),
            write=False,
        )

    async def _load(self, conn: AsyncConnection, where: ColumnElement[bool], what: str) -> Experiment:
        row = (await conn.execute(select(experiments).where(where))).first()
        if row is None:
            raise NotFound(f"no experiment with {what}")
        tag_rows = await conn.execute(
            select(experiment_tags.c.key, experiment_tags.c.value).where(
                experiment_tags.c.experiment_id == row.experiment_id
            )
        )
        return _experiment(row, {k: v for k, v in tag_rows})

    async def search(
        self,
        view: ViewType = ViewType.ACTIVE_ONLY,
        filter_string: str | None = None,
        max_results: int = 1000,
        order_by: Sequence[str] = (),
        page_token: str | None = None,
    ) -> Page[Experiment]:
        """Search experiments, MLflow style.

        Args:
            view: ACTIVE_ONLY, DELETED_ONLY or ALL.
            filter_string: e.g. ``"name LIKE 'nlp-%' AND tags.team = 'x'"``; attributes
                name (= != LIKE ILIKE), creation_time and last_update_time (= != > >= < <=),
                and ``tags.<key>`` (= != LIKE ILIKE).
            max_results: page size, 1-50000.
            order_by: e.g. ``["name ASC"]``; keys name, experiment_id, creation_time,
                last_update_time. Default: creation_time DESC; ties by experiment_id.
            page_token: ``next_page_token`` of the previous page.

        Raises:
            InvalidParameter: a malformed filter, order_by, max_results or page token.
        """
        view = check_view(view)
        clauses = f.parse_filter(filter_string, EXPERIMENT_GRAMMAR)
        orders = f.parse_order_by(order_by, EXPERIMENT_GRAMMAR)
        max_results = t.check_max_results(max_results)
        query_id = fingerprint("experiments", view.value, filter_string or "", list(order_by))
        offset = decode_offset(page_token, query_id)
        backend = self._uow.backend
        conditions = [experiments.c.workspace == self._workspace]
        conditions += [c for c in (view_condition(view, experiments.c.lifecycle_stage),) if c is not None]
        for clause in clauses:
            conditions.append(self._condition(clause))
        order_cols: list[Any] = []
        seen: set[str] = set()
        for item in orders or [f.OrderBy("attribute", "creation_time", False)]:
            column: Any = experiments.c[item.key]
            if item.key == "name":
                column = d.sortable(backend, column)
            order_cols += [case((column.is_(None), 1), else_=0), column.asc() if item.ascending else column.desc()]
            seen.add(item.key)
        if "experiment_id" not in seen:
            order_cols.append(experiments.c.experiment_id.asc())
        query = (
            select(experiments).where(*conditions).order_by(*order_cols)
            .limit(max_results + 1).offset(offset)
        )

        async def fn(conn: AsyncConnection) -> Page[Experiment]:
            rows = list(await conn.execute(query))
            more = len(rows) > max_results
            rows = rows[:max_results]
            tags: dict[int, dict[str, str]] = {r.experiment_id: {} for r in rows}
            for chunk in d.chunks([r.experiment_id for r in rows]):
                result = await conn.execute(
                    select(experiment_tags).where(experiment_tags.c.experiment_id.in_(chunk))
                )
                for tag in result:
                    tags[tag.experiment_id][tag.key] = tag.value
            token = encode_token({"o": offset + len(rows)}, query_id) if more else None
            return Page([_experiment(r, tags[r.experiment_id]) for r in rows], token)

        return await self._uow.run(fn, write=False)

    def _condition(self, clause: f.Clause) -> ColumnElement[bool]:
        backend = self._uow.backend
        if clause.entity == "tag":
            value = experiment_tags.c.value
            return exists().where(
                experiment_tags.c.experiment_id == experiments.c.experiment_id,
                experiment_tags.c.key == clause.key,
                clause_comparison(backend, value, clause),
            )
        return clause_comparison(backend, experiments.c[clause.key], clause)

    async def rename(self, experiment_id: str | int, new_name: str) -> None:
        """Rename an active experiment.

        Raises:
            NotFound: no such experiment. InvalidState: it is deleted.
            AlreadyExists: another experiment has ``new_name``.
        """
        exp_id = t.experiment_id_of(experiment_id)
        new_name = _check_name(new_name)

        async def fn(conn: AsyncConnection) -> None:
            await self._require_stage(conn, exp_id, LifecycleStage.ACTIVE, "rename")
            await conn.execute(
                update(experiments).where(experiments.c.experiment_id == exp_id)
                .values(name=new_name, last_update_time=t.now_ms())
            )

        await self._uow.run(fn, messages={ErrorCode.ALREADY_EXISTS: f"an experiment named {new_name!r} exists already"})

    async def delete(self, experiment_id: str | int) -> None:
        """Soft-delete an active experiment and all its runs (lifecycle_stage ``deleted``).

        Raises:
            NotFound: no such experiment. InvalidState: it is deleted already.
        """
        await self._set_stage(experiment_id, LifecycleStage.DELETED)

    async def restore(self, experiment_id: str | int) -> None:
        """Restore a deleted experiment and all its runs.

        Raises:
            NotFound: no such experiment. InvalidState: it is not deleted.
        """
        await self._set_stage(experiment_id, LifecycleStage.ACTIVE)

    async def _set_stage(self, experiment_id: str | int, stage: LifecycleStage) -> None:
        exp_id = t.experiment_id_of(experiment_id)
        deleting = stage is LifecycleStage.DELETED
        required = LifecycleStage.ACTIVE if deleting else LifecycleStage.DELETED

        async def fn(conn: AsyncConnection) -> None:
            await self._require_stage(conn, exp_id, required, "delete" if deleting else "restore")
            now = t.now_ms()
            await conn.execute(
                update(experiments).where(experiments.c.experiment_id == exp_id)
                .values(lifecycle_stage=stage.value, last_update_time=now)
            )
            await conn.execute(
                update(runs).where(runs.c.experiment_id == exp_id)
                .values(lifecycle_stage=stage.value, deleted_time=now if deleting else None)
            )

        await self._uow.run(fn)

    async def _require_stage(self, conn: AsyncConnection, exp_id: int, stage: LifecycleStage, action: str) -> None:
        """Lock the experiment row and check its lifecycle stage."""
        row = (
            await conn.execute(
                select(experiments.c.lifecycle_stage).where(experiments.c.experiment_id == exp_id).with_for_update()
            )
        ).first()
        if row is None:
            raise NotFound(f"no experiment with id {exp_id}")
        if row.lifecycle_stage != stage.value:
            raise InvalidState(
                f"cannot {action} experiment {exp_id}: it is {row.lifecycle_stage}; "
                f"only {stage.value} experiments can be {'restored' if action == 'restore' else action + 'd'}"
            )

    async def set_tag(self, experiment_id: str | int, key: str, value: str) -> None:
        """Set (insert or overwrite) a tag on an active experiment.

        Raises:
            NotFound: no such experiment. InvalidState: it is deleted.
            InvalidParameter: a bad key or a value over 5000 characters.
        """
        exp_id = t.experiment_id_of(experiment_id)
        pairs = t.tag_pairs("experiment tag", {key: value}, EXPERIMENT_TAG_VALUE_MAX)
        backend = self._uow.backend

        async def fn(conn: AsyncConnection) -> None:
            await self._require_stage(conn, exp_id, LifecycleStage.ACTIVE, "tag")
            await conn.execute(
                d.upsert(backend, experiment_tags, ("key", "experiment_id"), ("value",)),
                [{"experiment_id": exp_id, "key": k, "value": v} for k, v in pairs.items()],
            )
            await conn.execute(
                update(experiments).where(experiments.c.experiment_id == exp_id).values(last_update_time=t.now_ms())
            )

        await self._uow.run(fn, idempotent=True)

    async def delete_tag(self, experiment_id: str | int, key: str) -> None:
        """Delete a tag of an active experiment.

        Raises:
            NotFound: no such experiment, or it has no tag ``key``. InvalidState: it is deleted.
        """
        exp_id = t.experiment_id_of(experiment_id)
        key = t.check_key("experiment tag", key)

        async def fn(conn: AsyncConnection) -> None:
            await self._require_stage(conn, exp_id, LifecycleStage.ACTIVE, "untag")
            result = await conn.execute(
                delete(experiment_tags).where(
                    experiment_tags.c.experiment_id == exp_id, experiment_tags.c.key == key
                )
            )
            if result.rowcount == 0:
                raise NotFound(f"experiment {exp_id} has no tag {key!r}")

        await self._uow.run(fn)


__all__ = ["EXPERIMENT_GRAMMAR", "ExperimentRepository"]
