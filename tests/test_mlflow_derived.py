"""What span ingestion derives from spans, as MLflow 3.17's log_spans derives it.

The same spans are logged once through MLflow's own ``SqlAlchemyStore.log_spans`` and
once through asyncstore's, into one MLflow database (each store its own experiment and
trace ids): the derived columns of ``spans`` (costs, model, provider) and of
``trace_info`` (name, session, previews, token counts, costs), the trace tags and
request metadata, and what MLflow's ``get_trace_info`` reads, are the same row for row.
Then asyncstore's own database: the columns are filled, MLflow's keep/replace rules
hold across calls, bad values are refused or derive nothing as in MLflow, and the
statements sent stay bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select

from asyncstore import AsyncStore
from asyncstore.bulk import BULK_MIN
from asyncstore.entities import Span, SpanStatus
from asyncstore.errors import InvalidParameter
from asyncstore.schema import spans as spans_table
from asyncstore.schema import trace_info, trace_request_metadata, trace_tags
from asyncstore.tracing.rows import prepare
from tests.helpers import MS, T0, count_rows, count_statements, make_experiment, new_trace_id, transaction_retries
from tests.test_mlflow_databases import _mlflow_store, mlflow_uri  # noqa: F401  (fixture)

pytest.importorskip("mlflow")

from mlflow.entities import Span as MlflowSpan  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402

ROOT, LLM1, LLM2, LLM3, SUB, TOOL = "a0" * 8, "b1" * 8, "b2" * 8, "b3" * 8, "c4" * 8, "d5" * 8
USAGE, COST, MODEL, PROVIDER = "mlflow.chat.tokenUsage", "mlflow.llm.cost", "mlflow.llm.model", "mlflow.llm.provider"
INPUTS, OUTPUTS, NAME_TAG = "mlflow.spanInputs", "mlflow.spanOutputs", "mlflow.traceTag.mlflow.traceName"
ANALYTICS = (
    "input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
    "cache_creation_input_tokens_above_1hr", "input_cost", "output_cost", "total_cost",
)
TRACE_COLUMNS = (
    "trace_name", "session_id", "request_preview", "response_preview", *ANALYTICS, "status", "timestamp_ms",
    "execution_time_ms", "db_payload_generation",
)
SPAN_COLUMNS = ("input_cost", "output_cost", "total_cost", "model_name", "model_provider")


def _span(trace_id: str, span_id: str, parent: str | None, start_ms: int, end_ms: int | None, **fields: Any) -> Span:
    return Span(
        trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=fields.pop("name", f"s-{span_id[:2]}"),
        start_time_unix_nano=T0 + start_ms * MS, end_time_unix_nano=None if end_ms is None else T0 + end_ms * MS,
        status=fields.pop("status", SpanStatus.OK), **fields,
    )


def _usage(i: int, o: int, **cache: int) -> dict[str, int]:
    return {"input_tokens": i, "output_tokens": o, "total_tokens": i + o, **cache}


# Costs are sums of powers of two, so that adding them up in any order gives the same float.
def _cost(i: float, o: float) -> dict[str, float]:
    return {"input_cost": i, "output_cost": o, "total_cost": i + o}


Calls = list[Callable[[str], list[Span]]]


@dataclasses.dataclass
class Scenario:
    """Spans logged in one or more calls (each a function of the trace id), maybe after a start_trace."""

    name: str
    calls: Calls
    start: dict[str, Any] | None = None
    """start_trace's fields: timestamp_ms, execution_time_ms, tags, metadata."""
    resource: dict[str, Any] | None = None
    """The OpenTelemetry resource of every span."""


def _leaf_usage(tid: str) -> list[Span]:
    """Usage and cost on the LLM spans only; a named, tagged root with chat inputs and outputs."""
    return [
        _span(tid, ROOT, None, 0, 100, span_type="AGENT", attributes={
            INPUTS: {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2? é"}]},
            OUTPUTS: {"choices": [{"message": {"role": "assistant", "content": "4"}}]},
            NAME_TAG: "math question", "mlflow.traceTag.team": "core", "session.id": "sess-1",
        }),
        _span(tid, LLM1, ROOT, 10, 40, span_type="LLM", attributes={
            USAGE: _usage(10, 5, cache_read_input_tokens=2), COST: _cost(0.25, 0.5),
            MODEL: "gpt-4o-mini", PROVIDER: "openai",
        }),
        _span(tid, LLM2, ROOT, 50, 90, span_type="LLM", attributes={
            USAGE: _usage(7, 3), COST: _cost(0.125, 0.0625), MODEL: "claude-haiku", PROVIDER: "anthropic",
            "user.id": "alice",
        }),
        _span(tid, TOOL, LLM2, 60, 70, span_type="TOOL", attributes={"query": "x"}),
    ]


def _rollup(tid: str) -> list[Span]:
    """An agent framework that puts its children's total usage on the agent spans too."""
    return [
        _span(tid, ROOT, None, 0, 100, span_type="AGENT", attributes={
            USAGE: _usage(30, 12, cache_creation_input_tokens=4), INPUTS: "hello", OUTPUTS: {"answer": 42},
            "gen_ai.conversation.id": "conv-9",
        }),
        _span(tid, LLM1, ROOT, 5, 30, span_type="LLM", attributes={USAGE: _usage(10, 4), COST: _cost(0.5, 0.25)}),
        _span(tid, SUB, ROOT, 35, 95, span_type="AGENT", attributes={USAGE: _usage(20, 8, cache_creation_input_tokens=4)}),
        _span(tid, LLM2, SUB, 40, 90, span_type="LLM", attributes={
            USAGE: _usage(20, 8, cache_creation_input_tokens=4), COST: _cost(1.0, 0.125), MODEL: "m",
        }),
    ]


def _children_first(tid: str) -> list[Span]:
    """A batch exporter's first batch: the LLM spans ended, their agent (root) not yet."""
    return [
        _span(tid, LLM1, ROOT, 10, 40, span_type="LLM", attributes={USAGE: _usage(10, 5), COST: _cost(0.25, 0.5)}),
        _span(tid, LLM2, ROOT, 50, 60, span_type="LLM", attributes={
            USAGE: _usage(7, 3, cache_read_input_tokens=1), COST: _cost(0.125, 0.125), "session.id": "first",
        }),
        _span(tid, TOOL, LLM2, 52, 58, span_type="TOOL"),
    ]


def _parent_after(tid: str) -> list[Span]:
    """The second batch: the root with the total of its children, a new child, LLM1 sent again changed."""
    return [
        _span(tid, ROOT, None, 0, 100, span_type="AGENT", attributes={
            USAGE: _usage(40, 20), INPUTS: {"q": "x"}, NAME_TAG: "late name", "session.id": "second",
        }),
        _span(tid, LLM1, ROOT, 10, 40, span_type="LLM", attributes={USAGE: _usage(11, 6), COST: _cost(0.5, 0.5)}),
        _span(tid, LLM3, ROOT, 70, 99, span_type="LLM", attributes={USAGE: _usage(2, 2), COST: _cost(0.0625, 0.0)}),
    ]


def _sibling_later(tid: str) -> list[Span]:
    return [_span(tid, LLM3, ROOT, 95, 98, span_type="LLM", attributes={
        USAGE: _usage(1, 1, cache_read_input_tokens=5), COST: _cost(2.0, 4.0), "user.id": "bob",
    })]


def _malformed(tid: str) -> list[Span]:
    """Values MLflow cannot use (it derives nothing from them) or reads in its own way."""
    return [
        _span(tid, ROOT, None, 0, 100, attributes={
            INPUTS: {"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "look"}]}]},
            OUTPUTS: "x" * 1200, "mlflow.traceTag.bad/../key": "skipped", "mlflow.traceTag.num": 7,
            NAME_TAG: "", "session.id": "",
        }),
        _span(tid, LLM1, ROOT, 1, 2, attributes={
            USAGE: "lots", MODEL: 123, PROVIDER: {"name": "x"}, "session.id": "too late", "user.id": 42,
        }),
        _span(tid, LLM2, ROOT, 3, 4, attributes={USAGE: {"input_tokens": 1.5, "output_tokens": 2, "total_tokens": 3.5}}),
        # A JSON string, as a double-encoded OTLP attribute arrives: MLflow reads the object in it.
        _span(tid, LLM3, ROOT, 5, 6, attributes={
            USAGE: json.dumps(_usage(4, 4)), COST: json.dumps(_cost(0.5, 0.5)), MODEL: '"quoted"',
        }),
        _span(tid, SUB, ROOT, 7, 8, attributes={USAGE: {}, COST: {"input_cost": 1e308, "output_cost": 1e308}}),
    ]


def _resourceful(tid: str) -> list[Span]:
    return [
        _span(tid, ROOT, None, 0, 10, attributes={"mlflow.traceTag.service.name": "from-root", "mlflow.traceTag.k": "v"}),
        _span(tid, LLM1, ROOT, 1, 9, attributes={USAGE: _usage(1, 2)}),
    ]


def _started_spans(tid: str) -> list[Span]:
    return [
        _span(tid, ROOT, None, 5, 150, attributes={
            NAME_TAG: "span name", "session.id": "from-span", INPUTS: "in", OUTPUTS: "out", "user.id": "carol",
        }),
        _span(tid, LLM1, ROOT, 10, 20, attributes={USAGE: _usage(3, 4), COST: _cost(0.5, 0.5), MODEL: "m1"}),
    ]


def _started_more(tid: str) -> list[Span]:
    return [_span(tid, LLM2, ROOT, 30, 40, attributes={USAGE: _usage(100, 100), COST: _cost(8.0, 8.0)})]


SCENARIOS = [
    Scenario("leaf usage", [_leaf_usage]),
    Scenario("rollup on parents", [_rollup]),
    Scenario("parent in a later call", [_children_first, _parent_after]),
    Scenario("sibling in a later call", [_leaf_usage, _sibling_later]),
    Scenario("malformed values", [_malformed]),
    Scenario(
        "resource attributes",
        [_resourceful],
        resource={"service.name": "checkout", "telemetry.sdk.language": "python", "mlflow.x": "y",
                  "deployment.zones": ["a", "b"], "replicas": 3},
    ),
    # start_trace set the analytics: MLflow keeps its token counts and cost, and its session.
    Scenario("started with analytics", [_started_spans, _started_more], start={
        "tags": {"mlflow.traceName": "started name", "team": "t"},
        "metadata": {"mlflow.trace.session": "from-start", "mlflow.trace.cost": '{"total_cost": 2.0}',
                     "mlflow.trace.tokenUsage": '{"input_tokens": 100, "output_tokens": 50, "total_tokens": 150}'},
    }),
    # start_trace without them: the first call's sums fill them, and then count as start_trace's.
    Scenario("started without analytics", [_started_spans, _started_more], start={"metadata": {"note": "n"}}),
]


def _mlflow_spans(spans: list[Span], resource: dict[str, Any] | None) -> list[MlflowSpan]:
    """The same spans as MLflow's Span objects (rebuilt from the content asyncstore encodes,
    which is MLflow's Span.to_dict), with the resource an OTLP exporter would attach."""
    made = []
    for span in spans:
        (row,) = prepare([span], 1).span_rows
        mlflow_span = MlflowSpan.from_dict(json.loads(row[-1]))
        if resource is not None:
            mlflow_span._span._resource = Resource(resource)
        made.append(mlflow_span)
    return made


def _snapshot(ml: Any, trace_id: str) -> dict[str, Any]:
    """Everything log_spans derives for a trace, as stored, and MLflow's reading of it."""
    with ml.engine.connect() as conn:
        row = conn.execute(
            select(*(trace_info.c[c] for c in TRACE_COLUMNS)).where(trace_info.c.request_id == trace_id)
        ).one()
        spans = {
            r[0]: tuple(r[1:])
            for r in conn.execute(
                select(spans_table.c.span_id, *(spans_table.c[c] for c in SPAN_COLUMNS))
                .where(spans_table.c.trace_id == trace_id)
            )
        }
        tags = dict(conn.execute(select(trace_tags.c.key, trace_tags.c.value).where(trace_tags.c.request_id == trace_id)).all())
        metadata = dict(conn.execute(
            select(trace_request_metadata.c.key, trace_request_metadata.c.value)
            .where(trace_request_metadata.c.request_id == trace_id)
        ).all())
    info = ml.get_trace_info(trace_id)
    # The artifact location names the trace and its experiment: the same, but for the ids.
    for where in (tags, info.tags):
        assert where.pop("mlflow.artifactLocation").endswith(f"/traces/{trace_id}/artifacts")
    return {
        "trace_info": dict(zip(TRACE_COLUMNS, row)), "spans": spans, "tags": tags, "metadata": metadata,
        "get_trace_info": {
            "request_time": info.request_time, "execution_duration": info.execution_duration,
            "state": info.state.value, "request_preview": info.request_preview,
            "response_preview": info.response_preview, "tags": info.tags, "metadata": info.trace_metadata,
        },
    }


def test_asyncstore_derives_what_mlflow_log_spans_derives(backend: str, mlflow_uri: str) -> None:  # noqa: F811
    """Promise: for every scenario (usage on leaves, rollups on parents, a parent sent in a
    later call than its children, a re-sent span, values MLflow cannot use, resource
    attributes, traces started by start_trace with and without analytics), the values
    derived by asyncstore's log_spans equal those derived by MLflow's, column for column."""
    from mlflow.entities import TraceInfo as MlflowTraceInfo
    from mlflow.entities import TraceLocation, TraceState

    ids = {s.name: (new_trace_id(), new_trace_id()) for s in SCENARIOS}  # (MLflow's, asyncstore's)
    ml = _mlflow_store(mlflow_uri, backend)
    try:
        ml_exp, our_exp = ml.create_experiment("derived by mlflow"), ml.create_experiment("derived by asyncstore")

        async def log_ours(scenario: Scenario, call: int) -> None:
            tid = ids[scenario.name][1]
            async with AsyncStore.open(mlflow_uri) as store:
                if call == 0 and scenario.start is not None:
                    await store.traces.start(
                        our_exp, trace_id=tid, timestamp_ms=T0 // MS, execution_time_ms=200, state="OK",
                        tags=scenario.start.get("tags"), metadata=scenario.start.get("metadata"),
                    )
                spans = scenario.calls[call](tid)
                await store.spans.log_spans(our_exp, [dataclasses.replace(s, resource=scenario.resource or {}) for s in spans])

        for scenario in SCENARIOS:
            theirs = ids[scenario.name][0]
            if scenario.start is not None:
                ml.start_trace(MlflowTraceInfo(
                    trace_id=theirs, trace_location=TraceLocation.from_experiment_id(ml_exp), request_time=T0 // MS,
                    execution_duration=200, state=TraceState.OK, tags=dict(scenario.start.get("tags", {})),
                    trace_metadata=dict(scenario.start.get("metadata", {})),
                ))
            for call, make in enumerate(scenario.calls):
                ml.log_spans(ml_exp, _mlflow_spans(make(theirs), scenario.resource))
                asyncio.run(log_ours(scenario, call))
        snapshots = {name: (_snapshot(ml, a), _snapshot(ml, b)) for name, (a, b) in ids.items()}
    finally:
        ml.engine.dispose()
    for name, (by_mlflow, by_asyncstore) in snapshots.items():
        for part in by_mlflow:
            assert by_asyncstore[part] == by_mlflow[part], (name, part)
    # The scenarios do derive something (not two empty results agreeing).
    leaf = snapshots["leaf usage"][1]["trace_info"]
    assert (leaf["trace_name"], leaf["session_id"], leaf["total_tokens"], leaf["total_cost"]) == (
        "math question", "sess-1", 25, 0.9375
    )
    assert snapshots["rollup on parents"][1]["trace_info"]["total_tokens"] == 42
    assert snapshots["parent in a later call"][1]["trace_info"]["total_tokens"] == 60
    assert snapshots["parent in a later call"][1]["trace_info"]["db_payload_generation"] == 2  # one per call
    assert snapshots["started with analytics"][1]["trace_info"]["total_tokens"] == 150
    assert snapshots["started without analytics"][1]["trace_info"]["total_tokens"] == 7
    assert snapshots["resource attributes"][1]["tags"]["service.name"] == "from-root"
    assert snapshots["malformed values"][1]["spans"][LLM1][3:] == ("123", '{"name": "x"}')


# --- on asyncstore's own database -------------------------------------------------------------


async def _trace(store: AsyncStore, trace_id: str) -> dict[str, Any]:
    async with store.uow.transaction(write=False) as conn:
        row = (await conn.execute(
            select(*(trace_info.c[c] for c in TRACE_COLUMNS)).where(trace_info.c.request_id == trace_id)
        )).one()
        return dict(zip(TRACE_COLUMNS, row))


async def _span_columns(store: AsyncStore, trace_id: str) -> dict[str, tuple[Any, ...]]:
    async with store.uow.transaction(write=False) as conn:
        rows = await conn.execute(
            select(spans_table.c.span_id, *(spans_table.c[c] for c in SPAN_COLUMNS)).where(spans_table.c.trace_id == trace_id)
        )
        return {r[0]: tuple(r[1:]) for r in rows}


async def test_log_spans_fills_the_derived_columns(store: AsyncStore) -> None:
    """Promise: log_spans fills the span rows' costs, model and provider, and the trace's
    name, session, previews, token counts and costs, tags and user; the trace reads back
    with them as MLflow's tag and metadata."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    await store.spans.log_spans(exp, _leaf_usage(tid))
    row = await _trace(store, tid)
    assert {k: row[k] for k in TRACE_COLUMNS[:13]} == {
        "trace_name": "math question", "session_id": "sess-1", "request_preview": "2+2? é", "response_preview": "4",
        "input_tokens": 17, "output_tokens": 8, "total_tokens": 25, "cache_read_input_tokens": 2,
        "cache_creation_input_tokens": None, "cache_creation_input_tokens_above_1hr": None,
        "input_cost": 0.375, "output_cost": 0.5625, "total_cost": 0.9375,
    }
    assert await _span_columns(store, tid) == {
        ROOT: (None,) * 5, TOOL: (None,) * 5,
        LLM1: (0.25, 0.5, 0.75, "gpt-4o-mini", "openai"), LLM2: (0.125, 0.0625, 0.1875, "claude-haiku", "anthropic"),
    }
    info = await store.traces.get_info(tid)
    assert info.tags["mlflow.traceName"] == "math question" and info.tags["team"] == "core"
    assert (info.request_preview, info.response_preview) == ("2+2? é", "4")
    assert {k: info.metadata[k] for k in ("mlflow.trace.session", "mlflow.trace.user", "mlflow.trace.tokenUsage")} == {
        "mlflow.trace.session": "sess-1", "mlflow.trace.user": "alice",
        "mlflow.trace.tokenUsage": '{"input_tokens": 17, "output_tokens": 8, "total_tokens": 25, "cache_read_input_tokens": 2}',
    }


async def test_a_large_batch_carries_them_too(store: AsyncStore) -> None:
    """Promise: a batch large enough for PostgreSQL's COPY (and a re-sent one, which takes
    the upsert) stores the derived columns as a small one does."""
    exp = await make_experiment(store)
    traces = [new_trace_id() for _ in range(40)]
    batch = [s for t in traces for s in _leaf_usage(t)]
    assert len(batch) >= BULK_MIN
    for _ in range(2):
        await store.spans.log_spans(exp, batch)
        for tid in traces:
            row = await _trace(store, tid)
            assert (row["trace_name"], row["total_tokens"], row["total_cost"]) == ("math question", 25, 0.9375)
            assert (await _span_columns(store, tid))[LLM1] == (0.25, 0.5, 0.75, "gpt-4o-mini", "openai")


async def test_a_span_sent_again_replaces_its_columns(store: AsyncStore) -> None:
    """Promise: a span sent again replaces its row's costs, model and provider, with NULL
    when it no longer carries them (MLflow overwrites the row), in a batch that derives
    other span columns or none."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    await store.spans.log_spans(exp, _leaf_usage(tid))
    plain = [_span(tid, LLM1, ROOT, 10, 40)]
    mixed = [_span(tid, LLM2, ROOT, 50, 90), _span(tid, LLM3, ROOT, 91, 92, attributes={MODEL: "new"})]
    for batch in (plain, mixed):
        await store.spans.log_spans(exp, batch)
    assert await _span_columns(store, tid) == {
        ROOT: (None,) * 5, TOOL: (None,) * 5, LLM1: (None,) * 5, LLM2: (None,) * 5,
        LLM3: (None, None, None, "new", None),
    }


async def test_later_calls_follow_mlflow_s_rules(store: AsyncStore) -> None:
    """Promise: a later call sums token counts and costs over the whole span tree (a parent
    totalling children logged earlier is not counted twice; a re-sent span counts as sent
    again); the first session and the first user stay; a later trace name replaces the
    earlier; a trace start_trace gave analytics keeps them."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    await store.spans.log_spans(exp, _children_first(tid))
    first = await _trace(store, tid)
    assert (first["total_tokens"], first["total_cost"], first["session_id"], first["status"]) == (
        25, 1.0, "first", "IN_PROGRESS"
    )
    await store.spans.log_spans(exp, _parent_after(tid))
    second = await _trace(store, tid)
    assert (second["input_tokens"], second["output_tokens"], second["total_tokens"]) == (40, 20, 60)
    assert second["cache_read_input_tokens"] == 1  # only the earlier sum had it: kept
    assert (second["input_cost"], second["total_cost"]) == (0.5 + 0.125 + 0.0625, 1.0 + 0.25 + 0.0625)
    assert (second["session_id"], second["trace_name"], second["status"]) == ("first", "late name", "OK")

    started = new_trace_id()
    await store.traces.start(exp, trace_id=started, timestamp_ms=T0 // MS, metadata={
        "mlflow.trace.tokenUsage": '{"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}',
        "mlflow.trace.session": "s0",
    })
    await store.spans.log_spans(exp, _started_spans(started))
    row = await _trace(store, started)
    assert (row["total_tokens"], row["total_cost"], row["session_id"], row["trace_name"]) == (2, 1.0, "s0", "span name")


async def test_values_mlflow_cannot_use_derive_nothing(store: AsyncStore) -> None:
    """Promise: a token usage or cost of the wrong shape (where MLflow's own log_spans would
    even fail) is taken leniently: the batch is stored, the value derives nothing."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    await store.spans.log_spans(exp, [
        _span(tid, ROOT, None, 0, 10, attributes={INPUTS: {"messages": [{"role": "user", "content": {"x": 1}}]}}),
        _span(tid, LLM1, ROOT, 1, 2, attributes={USAGE: {**_usage(1, 1), "cache_read_input_tokens": None}}),
        _span(tid, LLM2, ROOT, 3, 4, attributes={USAGE: _usage(5, 5), COST: [1, 2]}),
        _span(tid, LLM3, ROOT, 5, 6, attributes={COST: {"input_cost": "0.5", "total_cost": "NaN"}}),
        _span(tid, SUB, ROOT, 7, 8, attributes={USAGE: ["x"], COST: "{not json", MODEL: None}),
    ])
    row = await _trace(store, tid)
    assert (row["input_tokens"], row["total_tokens"], row["cache_read_input_tokens"]) == (5, 10, None)
    assert (row["input_cost"], row["total_cost"]) == (None, None)
    assert row["request_preview"] == '{"messages": [{"role": "user", "content": {"x": 1}}]}'
    spans = await _span_columns(store, tid)
    assert spans[LLM2] == (None,) * 5
    assert spans[LLM3] == (0.5, None, None, None, None)  # the span row reads a numeric string, as MLflow's does
    assert spans[SUB] == (None, None, None, "null", None)


@pytest.mark.parametrize("attribute, limit", [("session.id", 250), (NAME_TAG, 4096)])
async def test_values_mlflow_refuses_refuse_the_batch(store: AsyncStore, attribute: str, limit: int) -> None:
    """Promise: a session id longer than 250 characters, or a trace name longer than 4096,
    which MLflow's log_spans refuses, is an InvalidParameter naming the span; nothing is written."""
    exp = await make_experiment(store)
    tid = new_trace_id()
    batch = [_span(tid, ROOT, None, 0, 10), _span(tid, LLM1, None, 0, 10, attributes={attribute: "x" * (limit + 1)})]
    with pytest.raises(InvalidParameter, match=rf"span #1 .*{LLM1}.*{attribute}.*{limit + 1} characters"):
        await store.spans.log_spans(exp, batch)
    assert await count_rows(store, trace_info) == 0
    await store.spans.log_spans(exp, [_span(tid, ROOT, None, 0, 10, attributes={attribute: "x" * limit})])


def _labels(seen: list[str]) -> list[str]:
    """What each statement writes or reads: its first words (transaction control left out)."""
    words = [s.split() for s in seen if not s.strip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
    return [" ".join(w[:2] if w[0] == "UPDATE" else w[:3]) for w in words]


async def test_derived_values_ride_in_the_same_statements(store: AsyncStore) -> None:
    """Promise: deriving adds no statement for new traces; a call that adds usage to traces
    that already have spans sends one more (their sums over the whole tree), and a batch
    with users one more (the user metadata): per batch, whatever its number of traces."""
    exp = await make_experiment(store)
    traces = [new_trace_id() for _ in range(30)]  # 90 spans: below COPY's threshold on PostgreSQL
    with count_statements(store) as seen:
        await store.spans.log_spans(exp, [s for t in traces for s in _children_first(t)])
    lookup = "SELECT e.artifact_location, f.request_id,"
    assert _labels(seen) == ["INSERT INTO trace_info", lookup, "INSERT INTO trace_tags", "INSERT INTO spans"], seen
    with count_statements(store) as more:
        await store.spans.log_spans(exp, [s for t in traces for s in _sibling_later(t)])
    assert _labels(more) == [
        "INSERT INTO trace_info", lookup, "UPDATE trace_info", "INSERT INTO trace_tags",
        "INSERT INTO trace_request_metadata", "INSERT INTO spans",
    ], more
    for tid in traces:
        row = await _trace(store, tid)
        assert (row["total_tokens"], row["cache_read_input_tokens"], row["total_cost"]) == (27, 6, 7.0)


async def test_concurrent_calls_on_the_same_traces_sum_every_span(migrated_uri: str) -> None:
    """Promise: 16 tasks logging, all at once, LLM spans with token usage and cost to the
    same three traces (one of them also their root, totalling what it saw) end with each
    trace's counts and costs summed over every stored span, as MLflow sums them: the sums
    over the stored spans are read after the trace row is locked, so no call's spans are
    missed; and the calls do not deadlock."""
    tasks, traces = 16, [new_trace_id() for _ in range(3)]
    async with AsyncStore.open(migrated_uri, pool_size=8, max_overflow=16) as store:
        exp = await make_experiment(store)

        def batch(task: int) -> list[Span]:
            out = [
                _span(tid, f"{task + 1:016x}", ROOT, task, task + 1, attributes={
                    USAGE: _usage(task + 1, 1), COST: _cost(2.0 ** -task, 1.0),
                })
                for tid in traces
            ]
            if task == tasks // 2:  # the root arrives in the middle, with a total of its own
                out.append(_span(traces[0], ROOT, None, 0, 100, attributes={USAGE: _usage(1000, 1000)}))
            return out

        with transaction_retries() as retried:
            await asyncio.gather(*(store.spans.log_spans(exp, batch(t)) for t in range(tasks)))
        assert [r.getMessage() for r in retried] == []  # no deadlock, not even one retried
        rows = [await _trace(store, tid) for tid in traces]
    assert (rows[0]["input_tokens"], rows[0]["total_tokens"]) == (1000, 2000)  # the root covers its children
    for row in rows[1:]:
        assert (row["input_tokens"], row["output_tokens"]) == (sum(range(1, tasks + 1)), tasks)
    for row in rows:  # no cost on the root: every child's
        assert (row["input_cost"], row["output_cost"]) == (sum(2.0 ** -t for t in range(tasks)), float(tasks))
