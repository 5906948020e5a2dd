"""The traces repository: trace info, tags, request metadata, metrics, delete, search.

Spans are written by :mod:`asyncstore.tracing.spans`; a trace row may be created by
span ingestion before (or without) :meth:`TraceRepository.start`, which then
completes it. Search lives in :mod:`asyncstore.tracing.search`.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore.config import Backend
from asyncstore.dialect import upsert
from asyncstore.entities import Page, Trace, TraceInfo, TraceState
from asyncstore.errors import AlreadyExists, ErrorCode, InvalidParameter, NotFound
from asyncstore.rules import as_double, experiment_id_of, now_ms
from asyncstore.schema import (
    KEY_MAX,
    TAG_VALUE_MAX,
    TRACE_PREVIEW_MAX,
    experiments,
    trace_info,
    trace_metrics,
    trace_request_metadata,
    trace_tags,
)
from asyncstore.tracing import analytics, keys
from asyncstore.tracing import links
from asyncstore.tracing.delete import delete_traces
from asyncstore.tracing.rows import check_trace_id
from asyncstore.tracing.search import search_traces
from asyncstore.tracing.spans import load_spans
from asyncstore.uow import UnitOfWork

CLIENT_REQUEST_ID_MAX = 50
_STATES = {s.value: s for s in TraceState}


def _state(value: TraceState | str, label: str = "state") -> TraceState:
    if isinstance(value, str) and value in _STATES:
        return _STATES[value]
    raise InvalidParameter(f"{label} {value!r} is not valid: use one of {', '.join(_STATES)}")


def whole(value: Any, label: str, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameter(f"{label} {value!r} is not valid: expected a whole number >= 0")
    return int(value)


def _preview(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParameter(f"{label} must be a string or None, got {type(value).__name__}")
    return value[:TRACE_PREVIEW_MAX]


def _pairs(values: Mapping[str, Any] | None, label: str) -> dict[str, str]:
    """Validate a tag/metadata map: string keys up to 250, string values up to 8000."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise InvalidParameter(f"{label} must be a mapping of strings to strings")
    for key, value in values.items():
        if not isinstance(key, str) or not key or len(key) > KEY_MAX:
            raise InvalidParameter(f"{label} key {key!r} is not valid: expected 1 to {KEY_MAX} characters")
        if not isinstance(value, str) or len(value) > TAG_VALUE_MAX:
            raise InvalidParameter(
                f"{label} value of {key!r} is not valid: expected a string of at most {TAG_VALUE_MAX} characters"
            )
    return dict(values)


def _info_from_row(row: Any, tags: dict[str, str], metadata: dict[str, str], metrics: dict[str, float]) -> TraceInfo:
    return TraceInfo(
        trace_id=row.request_id,
        experiment_id=str(row.experiment_id),
        timestamp_ms=row.timestamp_ms,
        execution_time_ms=row.execution_time_ms,
        state=_STATES.get(row.status, TraceState.IN_PROGRESS),
        client_request_id=row.client_request_id,
        request_preview=row.request_preview,
        response_preview=row.response_preview,
        tags=analytics.read_tags(row, tags),
        metadata=analytics.read_metadata(row, metadata),
        metrics=metrics,
    )


async def load_infos(conn: AsyncConnection, trace_ids: Sequence[str]) -> dict[str, TraceInfo]:
    """TraceInfo (with tags, metadata and metrics) of the given traces: four queries."""
    if not trace_ids:
        return {}
    ids = list(trace_ids)
    rows = (await conn.execute(select(trace_info).where(trace_info.c.request_id.in_(ids)))).all()
    children: dict[str, dict[str, dict[str, Any]]] = {tid: {"t": {}, "m": {}, "x": {}} for tid in ids}
    for tag, table in (("t", trace_tags), ("m", trace_request_metadata), ("x", trace_metrics)):
        query = select(table.c.request_id, table.c.key, table.c.value).where(table.c.request_id.in_(ids))
        for request_id, key, value in (await conn.execute(query)).all():
            children[request_id][tag][key] = value
    return {
        r.request_id: _info_from_row(r, children[r.request_id]["t"], children[r.request_id]["m"], children[r.request_id]["x"])
        for r in rows
    }


async def _load_info(conn: AsyncConnection, trace_id: str) -> TraceInfo:
    """One trace's info, read in the caller's transaction.

    Raises:
        NotFound: no such trace.
    """
    infos = await load_infos(conn, [trace_id])
    if trace_id not in infos:
        raise NotFound(f"trace {trace_id} does not exist")
    return infos[trace_id]


class TraceRepository:
    """Async repository for traces: ``store.traces``.

    Example::

        info = await store.traces.start(exp_id, request_preview="hi")
        await store.traces.end(info.trace_id, state="OK", execution_time_ms=12)
        trace = await store.traces.get(info.trace_id)
    """

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow

    @property
    def _backend(self) -> Backend:
        return self._uow.backend

    async def start(
        self,
        experiment_id: int | str,
        *,
        trace_id: str | None = None,
        timestamp_ms: int | None = None,
        execution_time_ms: int | None = None,
        state: TraceState | str = TraceState.IN_PROGRESS,
        client_request_id: str | None = None,
        request_preview: str | None = None,
        response_preview: str | None = None,
        tags: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> TraceInfo:
        """Start (create) a trace, or complete the row span ingestion already created.

        Args:
            experiment_id: the experiment.
            trace_id: ``tr-`` + 32 hex characters; generated when None.
            timestamp_ms: start, epoch ms (default: now). On an existing row the earlier
                of the two is kept.
            execution_time_ms, state, client_request_id: top-level fields.
            request_preview, response_preview: cut to 1000 characters.
            tags, metadata: merged into any existing ones, with what MLflow's
                ``start_trace`` adds (:mod:`asyncstore.tracing.keys`): the tag
                ``mlflow.artifactLocation`` and the metadata ``mlflow.trace.infoFinalized``.

        Raises:
            InvalidParameter: a bad argument; AlreadyExists: the trace id belongs to
            another experiment; NotFound: no such experiment.
        """
        exp = experiment_id_of(experiment_id)
        tid = "tr-" + uuid.uuid4().hex if trace_id is None else check_trace_id(trace_id)
        ts = now_ms() if timestamp_ms is None else whole(timestamp_ms, "timestamp_ms", optional=False)
        values = {
            "request_id": tid,
            "experiment_id": exp,
            "timestamp_ms": ts,
            "execution_time_ms": whole(execution_time_ms, "execution_time_ms"),
            "status": _state(state).value,
            "client_request_id": client_request_id,
            "request_preview": _preview(request_preview, "request_preview"),
            "response_preview": _preview(response_preview, "response_preview"),
        }
        if client_request_id is not None and (
            not isinstance(client_request_id, str) or len(client_request_id) > CLIENT_REQUEST_ID_MAX
        ):
            raise InvalidParameter(f"client_request_id must be a string of at most {CLIENT_REQUEST_ID_MAX} characters")
        tag_map, tag_columns = analytics.tag_columns(_pairs(tags, "tag"))
        meta_map, meta_columns = analytics.metadata_columns(_pairs(metadata, "metadata"))
        values.update({name: None for name in analytics.COLUMNS} | tag_columns | meta_columns)
        backend = self._backend

        async def work(conn: AsyncConnection) -> TraceInfo:
            await conn.execute(_start_upsert(backend), [values])
            owner, location = (
                await conn.execute(
                    select(trace_info.c.experiment_id, experiments.c.artifact_location)
                    .join(experiments, experiments.c.experiment_id == trace_info.c.experiment_id)
                    .where(trace_info.c.request_id == tid)
                )
            ).one()
            if owner != exp:
                raise AlreadyExists(f"trace {tid} exists already in experiment {owner}")
            # What MLflow's start_trace adds to the caller's tags and metadata (see keys).
            tags_written = dict(tag_map)
            if location is not None:
                tags_written[keys.ARTIFACT_LOCATION] = keys.trace_artifact_location(location, tid)
            await _put_pairs(conn, backend, trace_tags, tid, tags_written)
            await _put_pairs(conn, backend, trace_request_metadata, tid, {**meta_map, keys.INFO_FINALIZED: "true"})
            return (await load_infos(conn, [tid]))[tid]

        return await self._uow.run(
            work, idempotent=True, messages={ErrorCode.NOT_FOUND: f"experiment {exp} does not exist"}
        )

    async def update(
        self,
        trace_id: str,
        *,
        state: TraceState | str | None = None,
        execution_time_ms: int | None = None,
        request_preview: str | None = None,
        response_preview: str | None = None,
    ) -> TraceInfo:
        """Change the given top-level fields of a trace (None leaves a field as it is).

        Raises:
            NotFound: no such trace; InvalidParameter: a bad value.
        """
        check_trace_id(trace_id)
        changes: dict[str, Any] = {}
        if state is not None:
            changes["status"] = _state(state).value
        if execution_time_ms is not None:
            changes["execution_time_ms"] = whole(execution_time_ms, "execution_time_ms")
        if request_preview is not None:
            changes["request_preview"] = _preview(request_preview, "request_preview")
        if response_preview is not None:
            changes["response_preview"] = _preview(response_preview, "response_preview")

        async def work(conn: AsyncConnection) -> TraceInfo:
            if changes:
                result = await conn.execute(
                    update(trace_info).where(trace_info.c.request_id == trace_id).values(**changes)
                )
                if result.rowcount == 0:
                    raise NotFound(f"trace {trace_id} does not exist")
            return await _load_info(conn, trace_id)

        return await self._uow.run(work, idempotent=True)

    async def end(
        self,
        trace_id: str,
        *,
        state: TraceState | str = TraceState.OK,
        execution_time_ms: int | None = None,
        request_preview: str | None = None,
        response_preview: str | None = None,
    ) -> TraceInfo:
        """Finish a trace: state OK or ERROR, plus any of the other fields.

        Raises:
            InvalidParameter: ``state`` is IN_PROGRESS; NotFound: no such trace.
        """
        if _state(state) is TraceState.IN_PROGRESS:
            raise InvalidParameter("end() needs a final state, OK or ERROR; use update() to change other fields")
        return await self.update(
            trace_id, state=state, execution_time_ms=execution_time_ms,
            request_preview=request_preview, response_preview=response_preview,
        )

    async def get_info(self, trace_id: str) -> TraceInfo:
        """The trace's info, tags, metadata and metrics.

        Raises:
            NotFound: no such trace.
        """
        check_trace_id(trace_id)
        return await self._uow.run(lambda conn: _load_info(conn, trace_id), write=False)

    async def get(self, trace_id: str) -> Trace:
        """The trace's info and all its spans, each parent before its children.

        Raises:
            NotFound: no such trace.
        """
        check_trace_id(trace_id)

        async def work(conn: AsyncConnection) -> Trace:
            info = await _load_info(conn, trace_id)
            return Trace(info, tuple(await load_spans(conn, trace_id, must_exist=False)))

        return await self._uow.run(work, write=False)

    async def set_tag(self, trace_id: str, key: str, value: str) -> None:
        """Set (or overwrite) one tag; values up to 8000 characters (``mlflow.traceName``:
        4096, kept in ``trace_info.trace_name``: see :mod:`asyncstore.tracing.analytics`).

        Raises:
            NotFound: no such trace; InvalidParameter: a bad key or value.
        """
        await self.set_tags(trace_id, {key: value})

    async def set_tags(self, trace_id: str, tags: Mapping[str, str]) -> None:
        """Set several tags in one transaction."""
        rows, columns = analytics.tag_columns(_pairs(tags, "tag"))
        await self._set_pairs(trace_tags, trace_id, rows, columns)

    async def delete_tag(self, trace_id: str, key: str) -> None:
        """Delete one tag.

        Raises:
            NotFound: no such trace or no such tag on it.
        """
        check_trace_id(trace_id)

        async def work(conn: AsyncConnection) -> None:
            if key == analytics.TRACE_NAME:
                result = await conn.execute(
                    update(trace_info)
                    .where(trace_info.c.request_id == trace_id, trace_info.c.trace_name.isnot(None))
                    .values(trace_name=None)
                )
            else:
                result = await conn.execute(
                    delete(trace_tags).where(trace_tags.c.request_id == trace_id, trace_tags.c.key == key)
                )
            if result.rowcount == 0:
                raise NotFound(f"trace {trace_id} has no tag {key!r} (or the trace does not exist)")

        await self._uow.run(work)

    async def set_metadata(self, trace_id: str, metadata: Mapping[str, str]) -> None:
        """Set (merge) request metadata entries; values up to 8000 characters. The
        session, token usage and cost are kept in ``trace_info`` columns, as MLflow keeps
        them (:mod:`asyncstore.tracing.analytics`): a token usage or cost replaces the
        counts or costs it names.

        Raises:
            NotFound: no such trace; InvalidParameter: a bad key or value.
        """
        rows, columns = analytics.metadata_columns(_pairs(metadata, "metadata"))
        await self._set_pairs(trace_request_metadata, trace_id, rows, columns)

    async def set_metrics(self, trace_id: str, metrics: Mapping[str, float]) -> None:
        """Upsert numeric metrics of a trace (read back in ``TraceInfo.metrics``).

        Raises:
            NotFound: no such trace; InvalidParameter: a key or a non-finite value.
        """
        check_trace_id(trace_id)
        if not isinstance(metrics, Mapping):
            raise InvalidParameter("metrics must be a mapping of keys to numbers")
        rows = []
        for key, value in metrics.items():
            if not isinstance(key, str) or not key or len(key) > KEY_MAX:
                raise InvalidParameter(f"metric key {key!r} is not valid: expected 1 to {KEY_MAX} characters")
            number = as_double(value)
            if number is None or not math.isfinite(number):
                raise InvalidParameter(f"metric {key!r} value {value!r} is not valid: expected a finite number")
            rows.append({"request_id": trace_id, "key": key, "value": number})
        await self._write_children(trace_metrics, trace_id, rows)

    async def _set_pairs(
        self, table: Any, trace_id: str, pairs: dict[str, str], columns: dict[str, Any] | None = None
    ) -> None:
        check_trace_id(trace_id)
        rows = [{"request_id": trace_id, "key": k, "value": v} for k, v in pairs.items()]
        await self._write_children(table, trace_id, rows, columns)

    async def _write_children(
        self, table: Any, trace_id: str, rows: list[dict[str, Any]], columns: dict[str, Any] | None = None
    ) -> None:
        backend = self._backend

        async def work(conn: AsyncConnection) -> None:
            if columns:
                result = await conn.execute(
                    update(trace_info).where(trace_info.c.request_id == trace_id).values(**columns)
                )
                if result.rowcount == 0:
                    raise NotFound(f"trace {trace_id} does not exist")
            if rows:
                await conn.execute(upsert(backend, table, ["request_id", "key"], ["value"]), rows)
            elif not columns:
                found = (await conn.execute(select(trace_info.c.request_id).where(trace_info.c.request_id == trace_id))).first()
                if found is None:
                    raise NotFound(f"trace {trace_id} does not exist")

        await self._uow.run(
            work, idempotent=True, messages={ErrorCode.NOT_FOUND: f"trace {trace_id} does not exist"}
        )

    async def delete(
        self,
        experiment_id: int | str,
        *,
        max_timestamp_ms: int | None = None,
        max_traces: int | None = None,
        trace_ids: Sequence[str] | None = None,
    ) -> int:
        """Delete traces of an experiment with their spans, tags, metadata and metrics.

        Exactly one of ``max_timestamp_ms`` (traces that started at or before it,
        oldest first, at most ``max_traces`` of them) or ``trace_ids``. Spans are
        deleted in transactions of at most 10,000 rows, so deleting millions of spans
        never holds one giant lock; a failure part-way leaves whole traces deleted.

        Returns:
            The number of traces deleted.

        Raises:
            InvalidParameter: a bad combination of arguments.
        """
        return await delete_traces(self._uow, experiment_id, max_timestamp_ms, max_traces, trace_ids)

    async def search(
        self,
        experiment_ids: Sequence[int | str],
        filter_string: str = "",
        order_by: Sequence[str] = ("timestamp_ms DESC",),
        max_results: int = 100,
        page_token: str | None = None,
    ) -> Page[TraceInfo]:
        """Search traces of some experiments, a page at a time, with MLflow 3.17's
        trace search grammar, answering as MLflow's ``search_traces`` answers.

        Filters (clauses joined by AND; :mod:`asyncstore.tracing.search` has the details):

        * ``timestamp_ms``, ``execution_time_ms``, ``end_time_ms`` (also without
          ``_ms``): = != > >= < <= a number;
        * ``status`` (or ``state``), ``request_id`` (or ``trace_id``),
          ``client_request_id``: = != LIKE ILIKE RLIKE IN NOT IN;
        * ``name`` (the tag ``mlflow.traceName``), ``tags.<key>``, ``metadata.<key>``:
          = != LIKE ILIKE RLIKE IS NULL IS NOT NULL (the token usage and cost: = !=
          IS NULL IS NOT NULL); ``run_id = X``: traces linked to run X or logged in
          it; ``prompt = 'name/version'``: traces linked to that prompt version;
        * ``span.name``, ``span.type``, ``span.status``: = != LIKE ILIKE RLIKE IN
          NOT IN; ``span.content`` and ``text``: LIKE ILIKE; ``span.attributes.<name>``:
          = != LIKE ILIKE RLIKE on the span's JSON, as MLflow matches it. A trace
          matches when one of its spans matches every span clause.

        Prefixes: ``attributes.`` / ``attribute.`` / ``trace.`` / ``attr.`` (or none),
        ``tags.`` / ``tag.``, ``metadata.`` / ``request_metadata.``, ``span.`` /
        ``spans.``. ``feedback.``, ``expectation.`` and ``issue.`` (assessments) are
        refused. Order by ``timestamp_ms``, ``execution_time_ms``, ``end_time_ms``,
        ``status``, ``request_id``, ``experiment_id``, ``name``, ``run_id``,
        ``tags.<key>``, ``metadata.<key>``, several at once, ASC or DESC, NULLs last;
        ties broken by ``timestamp_ms DESC`` then trace id, as MLflow does. Paging by
        keyset, stable under inserts.

        Raises:
            InvalidParameter: a malformed filter, order or token, an RLIKE pattern that
                is not a regular expression, or an assessment key.
        """
        return await search_traces(
            self._uow, experiment_ids, filter_string, order_by, max_results, page_token, load_infos
        )

    async def link_to_run(self, trace_ids: Sequence[str], run_id: str) -> None:
        """Link up to 100 traces to a run (MLflow's ``link_traces_to_run``: rows of
        ``entity_associations``). Linking twice is a no-op.

        Raises:
            NotFound: no such run, or no such trace. InvalidParameter: more than 100
                trace ids, or a malformed id.
        """
        await links.link_to_run(self._uow, trace_ids, run_id)

    async def unlink_from_run(self, trace_ids: Sequence[str], run_id: str) -> int:
        """Remove the links between up to 100 traces and a run; return how many there were."""
        return await links.unlink_from_run(self._uow, trace_ids, run_id)

    async def linked_run_ids(self, trace_id: str) -> list[str]:
        """The runs a trace is linked to, in the order they were linked."""
        return await links.linked_run_ids(self._uow, trace_id)

    async def linked_trace_ids(self, run_id: str) -> list[str]:
        """The traces linked to a run, in the order they were linked."""
        return await links.linked_trace_ids(self._uow, run_id)


@functools.cache  # built once per backend
def _start_upsert(backend: Backend) -> Any:
    """INSERT a trace row, or complete the one span ingestion created (see :func:`_merge_fields`)."""
    return upsert(backend, trace_info, ["request_id"], [], merge=_merge_fields)


def _merge_fields(new: Any) -> dict[str, Any]:
    """SET clause that completes an existing trace row with the fields start() was given.

    The given fields win, fields given as None keep their stored value, and the
    earlier timestamp is kept.
    """
    current = trace_info.c
    return {
        "timestamp_ms": _least(current.timestamp_ms, new.timestamp_ms),
        "execution_time_ms": func.coalesce(new.execution_time_ms, current.execution_time_ms),
        "status": new.status,
        "client_request_id": func.coalesce(new.client_request_id, current.client_request_id),
        "request_preview": func.coalesce(new.request_preview, current.request_preview),
        "response_preview": func.coalesce(new.response_preview, current.response_preview),
        **{name: func.coalesce(new[name], current[name]) for name in analytics.COLUMNS},
    }


def _least(a: Any, b: Any) -> Any:
    return case((a <= b, a), else_=b)


async def _put_pairs(conn: AsyncConnection, backend: Backend, table: Any, trace_id: str, pairs: dict[str, str]) -> None:
    if pairs:
        rows = [{"request_id": trace_id, "key": k, "value": v} for k, v in pairs.items()]
        await conn.execute(upsert(backend, table, ["request_id", "key"], ["value"]), rows)
