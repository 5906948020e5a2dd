"""log_batch: validation of a batch, before any transaction starts.

:meth:`Batch.validate` checks every metric, param and tag against MLflow's rules
and limits and turns them into rows ready for the statements of
:mod:`asyncstore.tracking.ingest`: metric rows deduplicated and sorted in
primary-key order, and the batch's own latest candidate per metric key. It is on
the hot path of log_batch (1000 metrics a call), so each distinct key is checked
once per batch and plain finite floats skip the NaN/inf encoding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from asyncstore import rules as t
from asyncstore.entities import Metric, Param, RunTag
from asyncstore.schema import PARAM_VALUE_MAX, RUN_NAME_MAX, TAG_VALUE_MAX

MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTRIES_PER_BATCH = 1000
"""MLflow's log_batch limits: 1000 metrics, 100 params, 100 tags, 1000 entries in all."""

RUN_NAME_TAG = "mlflow.runName"
"""MLflow keeps the run name in this tag too; setting the tag renames the run."""

USER_TAG = "mlflow.user"
"""The tag MLflow's client takes a run's user from."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MetricRow = tuple[str, int, int, float, bool]
"""A metric row as written: (key, timestamp, step, stored value, is_nan), the
primary-key order of ``metrics`` (run_uuid aside)."""
Rank = tuple[int, int, float, bool]
"""MLflow's order for the latest value: (step, timestamp, value); is_nan breaks the last tie."""


class Batch:
    """A validated log_batch: rows ready to write and the latest candidate per key."""

    def __init__(self) -> None:
        self.metric_rows: list[MetricRow] = []
        """Distinct metric rows, sorted (key, timestamp, step, value, is_nan)."""
        self.latest: dict[str, Rank] = {}
        """Per metric key, the batch's greatest (step, timestamp, value, is_nan)."""
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}

    @property
    def empty(self) -> bool:
        """True when the batch holds nothing to write."""
        return not (self.metric_rows or self.params or self.tags)

    @classmethod
    def validate(
        cls, run_id: str, metric_list: Sequence[Metric], param_list: Sequence[Param], tag_list: Sequence[RunTag]
    ) -> Batch:
        """Check a batch against MLflow's rules and limits and prepare its rows.

        Raises:
            InvalidParameter: the first problem found (nothing has been written).
        """
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
        batch._add_metrics(metric_list)
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

    def _add_metrics(self, metric_list: Sequence[Metric]) -> None:
        """Validate the metrics; keep distinct rows in key order and the latest per key."""
        checked: set[str] = set()
        rows: set[MetricRow] = set()
        latest = self.latest
        for metric in metric_list:
            key: Any = metric.key
            if type(key) is not str or key not in checked:
                key = t.check_key("metric", key)
                checked.add(key)
            value: Any = metric.value
            if type(value) is float and abs(value) < t.FLOAT_MAX:  # finite, not the inf marker
                is_nan = False
            else:
                value, is_nan = t.encode_metric(value, key)
            ts: Any = metric.timestamp
            if type(ts) is not int or not _INT64_MIN <= ts <= _INT64_MAX:
                t.check_int(f"timestamp of metric {key!r}", ts)
            step: Any = metric.step
            if type(step) is not int or not _INT64_MIN <= step <= _INT64_MAX:
                t.check_int(f"step of metric {key!r}", step)
            rows.add((key, ts, step, value, is_nan))
            rank = (step, ts, value, is_nan)
            best = latest.get(key)
            if best is None or rank > best:
                latest[key] = rank
        self.metric_rows = sorted(rows)


__all__ = ["MAX_METRICS_PER_BATCH", "RUN_NAME_TAG", "Batch", "MetricRow", "Rank"]
