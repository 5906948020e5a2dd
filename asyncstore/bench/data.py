"""The rows the workloads write, generated deterministically.

asyncstore, MLflow and the raw drivers write the *same* rows: this module makes
them as plain tuples and dicts, and turns them into asyncstore entities
(:func:`to_metrics`, :func:`to_spans`); MLflow's peer makes MLflow entities of them,
and the raw ceilings take the row tuples the store's own preparation makes of those
entities.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from typing import Any

from asyncstore.bench.scale import METRIC_BATCH, SPAN_BATCH, SPANS_PER_TRACE
from asyncstore.entities import Metric, Span, SpanStatus

BASE_TIME_MS = 1_760_000_000_000
"""Epoch milliseconds the generated timestamps start from (a fixed date, so runs compare)."""
METRIC_KEYS = 100
"""Distinct metric keys per batch; a 1,000-metric batch is 100 keys x 10 steps."""
_PAYLOAD_WORDS = ("the", "model", "answer", "tool", "call", "token", "prompt", "agent", "result", "span")


@dataclasses.dataclass(frozen=True)
class MetricRow:
    """One metric value: MLflow's (key, value, timestamp, step)."""

    key: str
    value: float
    timestamp: int
    step: int


@dataclasses.dataclass(frozen=True)
class SpanRow:
    """One span as plain data; ``attributes`` makes the JSON content about 1 KB."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    span_type: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]


def metric_batch(rep: int, batch: int, batches_per_rep: int, *, size: int = METRIC_BATCH) -> list[MetricRow]:
    """``size`` metrics: 100 keys at consecutive steps (1,000 = 10 steps), later steps in later batches."""
    rng = random.Random(f"metrics-{rep}-{batch}")
    steps = -(-size // METRIC_KEYS)
    first_step = (rep * batches_per_rep + batch) * steps
    return [
        MetricRow(
            key=f"metric_{j % METRIC_KEYS:03d}",
            value=rng.random(),
            timestamp=BASE_TIME_MS + first_step + j // METRIC_KEYS,
            step=first_step + j // METRIC_KEYS,
        )
        for j in range(size)
    ]


def hex_id(*parts: object, length: int) -> str:
    """A deterministic lowercase hex id of ``length`` characters from ``parts``."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=length // 2).hexdigest()


def trace_id(*parts: object) -> str:
    """An MLflow trace id, ``tr-`` + 32 hex characters."""
    return "tr-" + hex_id("trace", *parts, length=32)


def span_batch(
    salt: str, rep: int, batch: int, *, size: int = SPAN_BATCH, per_trace: int = SPANS_PER_TRACE
) -> list[SpanRow]:
    """``size`` spans of ``size // per_trace`` traces; each trace is a root and its children.

    Every span carries about 1 KB of JSON (inputs, outputs, a few attributes), the
    size of a typical LLM call span. Times are nanoseconds, children inside the root.
    """
    rng = random.Random(f"spans-{salt}-{rep}-{batch}")
    rows: list[SpanRow] = []
    for t in range(size // per_trace):
        tid = trace_id(salt, rep, batch, t)
        root_id = hex_id(tid, 0, length=16)
        start = (BASE_TIME_MS + (rep * 1000 + batch) * 60_000 + t * 1000) * 1_000_000
        for i in range(per_trace):
            span_start = start + i * 1_000_000
            end = start + per_trace * 2_000_000 if i == 0 else span_start + rng.randrange(100_000, 900_000)
            kind = "CHAIN" if i == 0 else ("LLM" if i % 3 else "TOOL")
            rows.append(
                SpanRow(
                    trace_id=tid,
                    span_id=root_id if i == 0 else hex_id(tid, i, length=16),
                    parent_span_id=None if i == 0 else root_id,
                    name="agent" if i == 0 else f"{kind.lower()}_{i % 5}",
                    span_type=kind,
                    start_ns=span_start,
                    end_ns=end,
                    attributes=_attributes(rng, i),
                )
            )
    return rows


def _attributes(rng: random.Random, index: int) -> dict[str, Any]:
    text = " ".join(rng.choice(_PAYLOAD_WORDS) for _ in range(55))  # ~300 characters: ~1 KB of JSON per span
    return {
        "inputs": {"messages": [{"role": "user", "content": text}]},
        "outputs": {"content": text[::-1]},
        "model": "bench-model",
        "temperature": 0.2,
        "tokens": 100 + index,
    }


def to_metrics(rows: list[MetricRow]) -> list[Metric]:
    """asyncstore ``Metric`` entities of generated rows."""
    return [Metric(m.key, m.value, m.timestamp, m.step) for m in rows]


def to_spans(rows: list[SpanRow]) -> list[Span]:
    """asyncstore ``Span`` entities of generated rows."""
    return [
        Span(
            trace_id=r.trace_id, span_id=r.span_id, name=r.name, start_time_unix_nano=r.start_ns,
            end_time_unix_nano=r.end_ns, parent_span_id=r.parent_span_id, span_type=r.span_type,
            status=SpanStatus.OK, attributes=r.attributes,
        )
        for r in rows
    ]
