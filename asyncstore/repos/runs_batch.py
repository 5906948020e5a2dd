"""log_batch: validation of a batch and the bounded set of statements that write it.

Everything is validated before the transaction starts; inside it, a batch costs the
same handful of statements whatever its size (executemany of multi-row INSERTs and
upserts, one read of the stored params, one of the stored latest metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from asyncstore.config import Backend
from asyncstore.entities import Metric, Param, RunTag
from asyncstore.repos import _tracking as t
from asyncstore.schema import PARAM_VALUE_MAX, RUN_NAME_MAX, TAG_VALUE_MAX, latest_metrics, runs
from asyncstore.schema import metrics as metric_table
from asyncstore.schema import params as param_table
from asyncstore.schema import tags as run_tags

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTRIES_PER_BATCH = 1000
"""MLflow's log_batch limits: 1000 metrics, 100 params, 100 tags, 1000 entries in all."""

RUN_NAME_TAG = "mlflow.runName"
"""MLflow keeps the run name in this tag too; setting the tag renames the run."""

_METRIC_PK = ("key", "timestamp", "step", "run_uuid", "value", "is_nan")


def metric_rank(step: int, timestamp: int, value: float, is_nan: bool) -> tuple[int, int, float, bool]:
    """MLflow's order for the latest value: (step, timestamp, value); is_nan breaks the last tie."""
    return (step, timestamp, value, is_nan)


async def write_batch(conn: AsyncConnection, backend: Backend, run_id: str, batch: Batch) -> None:
    """Write a validated batch to a run whose row the caller has locked.

    Order: params (checked against the stored ones first, so a conflict writes
    nothing), metrics, latest metrics, tags; rows in sorted key order. At most seven
    statements, whatever the batch size.
    """
    if batch.params:
        found = await conn.execute(
            select(param_table.c.key, param_table.c.value).where(
                param_table.c.run_uuid == run_id, param_table.c.key.in_(sorted(batch.params))
            )
        )
        existing = {k: v for k, v in found}
        for key, old in sorted(existing.items()):
            if old != batch.params[key]:
                t.invalid(
                    f"param {key!r} of run {run_id} was logged with value {old!r}; params are immutable, "
                    f"so the new value {batch.params[key]!r} is refused"
                )
        new = [{"run_uuid": run_id, "key": k, "value": v} for k, v in sorted(batch.params.items()) if k not in existing]
        if new:
            await conn.execute(insert(param_table), new)
    if batch.metric_rows:
        await conn.execute(t.upsert(backend, metric_table, _METRIC_PK, ()), batch.metric_rows)
        lm = latest_metrics.c
        found = await conn.execute(
            select(lm.key, lm.step, lm.timestamp, lm.value, lm.is_nan).where(
                lm.run_uuid == run_id, lm.key.in_(sorted(batch.latest))
            )
        )
        current = {r.key: metric_rank(r.step, r.timestamp or 0, r.value, bool(r.is_nan)) for r in found}
        winners = [
            {"run_uuid": run_id, "key": key, "step": rank[0], "timestamp": rank[1], "value": rank[2], "is_nan": rank[3]}
            for key, rank in sorted(batch.latest.items())
            if key not in current or rank > current[key]
        ]
        if winners:
            await conn.execute(
                t.upsert(backend, latest_metrics, ("key", "run_uuid"), ("value", "timestamp", "step", "is_nan")),
                winners,
            )
    if batch.tags:
        await conn.execute(
            t.upsert(backend, run_tags, ("key", "run_uuid"), ("value",)),
            [{"run_uuid": run_id, "key": k, "value": v} for k, v in sorted(batch.tags.items())],
        )
        if RUN_NAME_TAG in batch.tags:
            await conn.execute(update(runs).where(runs.c.run_uuid == run_id).values(name=batch.tags[RUN_NAME_TAG]))


class Batch:
    """A validated log_batch: rows ready to write and the latest candidate per key."""

    def __init__(self) -> None:
        self.metric_rows: list[dict[str, Any]] = []
        self.latest: dict[str, tuple[int, int, float, bool]] = {}
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    @property
    def empty(self) -> bool:
        return not (self.metric_rows or self.params or self.tags)

    @classmethod
    def validate(
        cls, run_id: str, metric_list: Sequence[Metric], param_list: Sequence[Param], tag_list: Sequence[RunTag]
    ) -> Batch:
        for name, items, kind in (("metrics", metric_list, Metric), ("params", param_list, Param), ("tags", tag_list, RunTag)):
            if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
                t.invalid(f"{name} must be a list of {kind.__name__} objects")
            for item in items:
                if not isinstance(item, kind):
                    t.invalid(f"{name} must contain {kind.__name__} objects, got {type(item).__name__}")
        counts = (len(metric_list), len(param_list), len(tag_list))
        limits = (MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MAX_TAGS_PER_BATCH)
        for name, count, limit in zip(("metrics", "params", "tags"), counts, limits):
            if count > limit:
                t.invalid(f"a batch may hold at most {limit} {name}; {count} were given")
        if sum(counts) > MAX_ENTRIES_PER_BATCH:
            t.invalid(f"a batch may hold at most {MAX_ENTRIES_PER_BATCH} metrics, params and tags in all; {sum(counts)} were given")
        batch = cls()
        seen: set[tuple[Any, ...]] = set()
        for metric in metric_list:
            key = t.check_key("metric", metric.key)
            value, is_nan = t.encode_metric(metric.value, key)
            ts = cast(int, t.check_int(f"timestamp of metric {key!r}", metric.timestamp))
            step = cast(int, t.check_int(f"step of metric {key!r}", metric.step))
            rank = metric_rank(step, ts, value, is_nan)
            if (key, *rank) in seen:
                continue
            seen.add((key, *rank))
            batch.metric_rows.append(
                {"run_uuid": run_id, "key": key, "value": value, "timestamp": ts, "step": step, "is_nan": is_nan}
            )
            if key not in batch.latest or rank > batch.latest[key]:
                batch.latest[key] = rank
        batch.metric_rows.sort(key=lambda r: (r["key"], r["timestamp"], r["step"], r["value"], r["is_nan"]))
        for param in param_list:
            key = t.check_key("param", param.key)
            value = t.check_value("param", key, param.value, PARAM_VALUE_MAX)
            if key in batch.params and batch.params[key] != value:
                t.invalid(f"param {key!r} appears twice in the batch with different values {batch.params[key]!r} and {value!r}")
            batch.params[key] = value
        for tag in tag_list:
            key = t.check_key("tag", tag.key)
            value = t.check_value("tag", key, tag.value, TAG_VALUE_MAX)
            if key == RUN_NAME_TAG:
                t.check_string("run name", value, RUN_NAME_MAX)
            batch.tags[key] = value
        return batch


__all__ = ["Batch", "MAX_METRICS_PER_BATCH", "RUN_NAME_TAG", "metric_rank", "write_batch"]
