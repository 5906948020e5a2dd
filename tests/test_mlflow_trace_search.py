"""MLflow's trace search grammar: a corpus of filter and order strings run through
MLflow 3.17's own ``search_traces`` and asyncstore's ``traces.search`` on the same
MLflow database, whose traces, spans, tags, metadata and links MLflow wrote. Both must
answer with the same trace ids in the same order, or both refuse with
INVALID_PARAMETER.

Where asyncstore deliberately answers otherwise, the case is listed with what it
answers, and what MLflow does is checked too:

* ``EXTENSIONS``: asyncstore answers what MLflow refuses; each is paired with a string
  MLflow takes that asks the same, and the answers must be equal.
* ``ORDER_EXTENSIONS``: orders MLflow accepts but fails on (``end_time``).
* ``MLFLOW_FAILS``: asyncstore refuses, where MLflow fails with an error that is not
  INVALID_PARAMETER (duplicate order keys, IN on span attributes).
* ``STRICTER``: asyncstore refuses what MLflow answers (a filter that does not parse
  whole, an empty key, a quoted number for a numeric key, a quoted span attribute name).
* ``BAD_REGEX``: asyncstore refuses a pattern that is not a regular expression, where
  MLflow matches nothing on SQLite and fails on the servers.
* ``UNSUPPORTED``: assessments (``feedback.``, ``expectation.``, ``issue.``), which
  asyncstore does not store: refused, saying so.
* ``DIFFERENT``: ``run_id = A AND run_id = B``, where MLflow keeps only the last
  ``run_id`` clause; asyncstore requires both.

Left out of the corpus: LIKE patterns with a backslash (MLflow's answers differ by
backend), and upper-case tag or metadata keys (``tags.TEAM``), which asyncstore
always compares case-sensitively while MLflow's MySQL ordering and IS NULL do not.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from asyncstore import AsyncStore, StoreError
from asyncstore.errors import ErrorCode
from tests.test_mlflow_databases import _mlflow_store, mlflow_uri  # noqa: F401  (fixture)

pytest.importorskip("mlflow")

MS = 1_000_000

# Each span: name, type, status (None: unset), attributes, start and duration in ms from the trace's timestamp.
_Span = tuple[str, str, "str | None", dict[str, Any], int, int]
_TOKENS = json.dumps({"input_tokens": 5, "output_tokens": 7, "total_tokens": 12})

TRACES: list[tuple[int, int | None, str, str | None, dict[str, str], dict[str, str], str | None, list[_Span]]] = [
    # timestamp, duration, state, name, tags, metadata, client request id, spans
    (1000, 2010, "OK", "Chat turn", {"team": "a", "env": "Prod", "my key": "x y"},
     {"user": "ann", "mlflow.trace.session": "s-1"}, "req-1", [
         ("agent", "AGENT", "OK", {"inputs": {"question": "What is MLflow?"}, "outputs": "A platform",
                                   "model": "gpt-4o", "temperature": 0.5, "my key": "spaced"}, 0, 50),
         ("llm call", "LLM", "OK", {"model": "GPT-4o-mini"}, 5, 30),
     ]),
    (2000, None, "IN_PROGRESS", "chat turn", {"team": "b"}, {"user": "Bob"}, None, [
        ("retrieve", "RETRIEVER", "ERROR", {"inputs": "Error: Timeout", "k": 3}, 0, 20),
    ]),
    (3000, 10, "ERROR", None, {"team": "A_b", "name": "tagged"},
     {"mlflow.trace.tokenUsage": _TOKENS, "mlflow.trace.cost": json.dumps({"total_cost": 0.5})}, "REQ-2", [
         ("search_tool", "TOOL", None, {"query": "weather in Paris", "model": "none"}, 0, 10),
     ]),
    (3000, 200, "OK", "summarize", {"env": "dev"}, {"mlflow.trace.session": "s-2"}, "req-3", [
        ("agent", "CHAIN", "OK", {"inputs": {"doc": "Long text"}, "outputs": {"summary": "short"}}, 0, 200),
    ]),
    (4000, 0, "OK", "Chat turn", {}, {"user": "ann"}, "req-4", []),  # metadata mlflow.sourceRun: run 2
    (30000, 5, "ERROR", "Zeta", {"team": "a"}, {"user": "ann"}, None, [  # metadata mlflow.sourceRun: run 1
        ("early", "UNKNOWN", "OK", {}, -25000, 5),  # started 25 s before its trace
    ]),
]
"""Linked by MLflow: trace 3 to run 1, traces 0 and 3 to the prompt version qa/2. A
trace of another experiment (tag team = a) must never be found."""

FILTERS = [
    "",
    # trace attributes
    "timestamp_ms > 1500", "timestamp > 1500", "timestamp_ms > 1500.5", "timestamp_ms = 3000", "timestamp_ms != 3000",
    "trace.timestamp_ms <= 3000", "attributes.timestamp < 2500", "attribute.timestamp_ms >= 2000", "timestamp_ms = 1e3",
    "timestamp_ms > -1", "timestamp_ms>1000", "timestamp > 3000",
    "execution_time_ms > 20", "execution_time > 20", "execution_time_ms = 0", "execution_time_ms != 50",
    "end_time_ms > 1050", "end_time > 2000", "end_time_ms = 2000", "end_time_ms >= 3010", "end_time_ms < 3010",
    "status = 'OK'", "status != 'OK'", "trace.status = 'ERROR'", "status IN ('OK', 'ERROR')", "status NOT IN ('OK')",
    "status LIKE 'O%'", "status ILIKE 'o%'", "status RLIKE '^IN_'", "status RLIKE 'R+O'", "status = 'ok'",
    'status = "OK"', 'status IN ("OK")', "status='OK'", " status = 'OK' ", "attributes.status = 'OK'",
    "request_id = 'tr-00000000000000000000000000000001'",
    "request_id IN ('tr-00000000000000000000000000000001', 'tr-00000000000000000000000000000003')",
    "request_id NOT IN ('tr-00000000000000000000000000000001')", "request_id LIKE '%3'", "request_id RLIKE '1$'",
    "request_id ILIKE 'TR-%1'",
    "client_request_id = 'req-1'", "client_request_id = 'REQ-2'", "client_request_id ILIKE 'req%'",
    "client_request_id LIKE 'req%'", "client_request_id != 'req-1'", "client_request_id IN ('req-1', 'REQ-2')",
    "client_request_id NOT IN ('req-1')", "client_request_id RLIKE '^[a-z]+-[0-9]$'",
    "client_request_id = 'req-1' AND client_request_id = 'req-3'",
    # the trace name: name, tags.mlflow.traceName, and any prefix's name
    "name = 'Chat turn'", "name = 'chat turn'", "name != 'Chat turn'", "name LIKE 'Chat%'", "name ILIKE 'chat%'",
    "name RLIKE 'turn$'", "name RLIKE '^c'", "name LIKE '%turn'", "name IS NULL", "name IS NOT NULL",
    'name = "Chat turn"', "trace.name = 'summarize'", "attributes.name = 'summarize'", "tags.name = 'summarize'",
    "tags.NAME = 'summarize'", "metadata.name = 'summarize'", "tags.mlflow.traceName = 'summarize'",
    "tags.`mlflow.traceName` = 'summarize'", "tags.mlflow.traceName IS NULL", "tags.mlflow.traceName RLIKE 'Chat'",
    "tags.mlflow.traceName != 'summarize'",
    # tags
    "tags.team = 'a'", "tags.team != 'a'", "tags.team LIKE 'A%'", "tags.team ILIKE 'a%'", "tags.team RLIKE '^A'",
    "tags.team RLIKE 'b$'", "tags.team RLIKE 'A|b'", "tags.team IS NULL", "tags.team IS NOT NULL", 'tags.team = "a"',
    "tags.\"team\" = 'a'", "tags.`team` = 'a'", "tag.team = 'a'", "tags.env = 'prod'", "tags.env = 'Prod'",
    "tags.env ILIKE 'PROD'", "tags.env RLIKE 'prod'", "tags.team LIKE 'A_b'", "tags.team ILIKE 'A_B'",
    "tags.`my key` = 'x y'", "tags.`my key` LIKE 'x%'", "tags.timestamp = 'x'", "tags.team='a'",
    "tags.team = 'a' AND tags.team = 'b'", "tags.team = 'a' AND tags.env = 'Prod'",
    # metadata, the session, token usage and cost
    "metadata.user = 'ann'", "metadata.user != 'ann'", "metadata.user LIKE 'B%'", "metadata.user ILIKE 'b%'",
    "metadata.user RLIKE 'n+$'", "metadata.user IS NULL", "metadata.user IS NOT NULL", "request_metadata.user = 'ann'",
    "metadata.`mlflow.trace.session` = 's-1'", "metadata.mlflow.trace.session LIKE 's-%'",
    "metadata.mlflow.trace.session IS NULL", "metadata.mlflow.trace.session IS NOT NULL",
    "metadata.mlflow.trace.session RLIKE '2$'", "metadata.mlflow.trace.session != 's-1'",
    f"metadata.`mlflow.trace.tokenUsage` = '{_TOKENS}'", f"metadata.`mlflow.trace.tokenUsage` != '{_TOKENS}'",
    "metadata.`mlflow.trace.tokenUsage` IS NULL", "metadata.`mlflow.trace.tokenUsage` IS NOT NULL",
    "metadata.`mlflow.trace.tokenUsage` = 'garbage'", "metadata.`mlflow.trace.cost` = '{\"total_cost\": 0.5}'",
    "metadata.`mlflow.trace.cost` = '{\"total_cost\": 0.50}'", "metadata.`mlflow.trace.cost` IS NOT NULL",
    "metadata.`mlflow.trace.cost` != '{\"total_cost\": 0.5}'",
    # runs: linked (entity_associations) or logged in (metadata mlflow.sourceRun)
    "run_id = '{run1}'", "run_id = '{run2}'", "run_id != '{run2}'", "run_id LIKE '%'", "run_id IS NULL",
    "run_id IS NOT NULL", "trace.run_id = '{run1}'", "attributes.run_id = '{run2}'", "run_id='{run1}'",
    "metadata.mlflow.sourceRun = '{run2}'", "metadata.mlflow.sourceRun = '{run1}'", "metadata.run_id = '{run1}'",
    "run_id = '{run1}' AND status = 'OK'",
    # prompts
    "prompt = 'qa/2'", "prompt = 'qa/3'", "tags.prompt = 'qa/2'", "tags.mlflow.linkedPrompts = 'qa/2'",
    "trace.prompt = 'qa/2'", 'prompt = "qa/2"',
    # spans: one span matches every span clause
    "trace.text ILIKE '%timeout%'", "trace.text LIKE '%MLflow%'", "trace.text LIKE '%mlflow%'",
    "trace.text ILIKE '%long TEXT%'", "tags.text ILIKE '%timeout%'",
    "span.name = 'agent'", "span.name != 'agent'", "span.name LIKE 'llm%'", "span.name ILIKE 'LLM%'",
    "span.name RLIKE '^s'", "span.name IN ('agent', 'retrieve')", "span.name NOT IN ('agent')", "span.`name` = 'agent'",
    "span.\"name\" = 'agent'", "span.name = \"agent\"", "span.name='agent'",
    "span.type = 'LLM'", "span.type = 'llm'", "span.type IN ('TOOL', 'CHAIN')", "span.type RLIKE 'L+M'",
    "span.status = 'ERROR'", "span.status = 'UNSET'", "span.status = 'OK'", "span.status != 'OK'",
    "span.status LIKE 'E%'", "span.status IN ('OK', 'ERROR')", "span.status NOT IN ('OK')", "span.status RLIKE 'E'",
    "span.status ILIKE 'e%'",
    "span.content LIKE '%Paris%'", "span.content ILIKE '%paris%'", "span.content LIKE '%paris%'",
    "span.content LIKE '%\"model\"%'",
    "span.attributes.model = 'gpt-4o'", "span.attributes.model != 'x'", "span.attributes.model LIKE '%gpt%'",
    "span.attributes.model ILIKE '%gpt%'", "span.attributes.model RLIKE 'gpt'", "span.attributes.model RLIKE '^gpt'",
    "span.attributes.model RLIKE '^gpt-4o$'", "span.attributes.model RLIKE '^GPT'",
    "span.attributes.model RLIKE 'mini$'",
    "span.attributes.model LIKE '%\"gpt-4o\"%'", "span.attributes.`model` RLIKE 'gpt'",
    "span.attributes.`my key` LIKE '%spaced%'", "span.attributes.`my key` RLIKE 'space'",
    "span.attributes.mlflow.spanType RLIKE 'LLM'", "span.attributes.k RLIKE '3'",
    "span.attributes.temperature LIKE '%0.5%'",
    "span.attributes.mlflow.spanInputs RLIKE 'MLflow'", "span.attributes.mlflow.spanInputs ILIKE '%mlflow%'",
    "span.name = 'agent' AND span.type = 'LLM'", "span.name = 'llm call' AND span.type = 'LLM'",
    "span.attributes.model LIKE '%gpt%' AND span.name = 'agent'",
    "span.attributes.model LIKE '%gpt%' AND span.name = 'retrieve'",
    "span.attributes.model ILIKE '%GPT-4O-MINI%' AND span.type = 'LLM'",
    # a timestamp bound keeps MLflow from looking at spans that started over 10 s before it
    "span.name = 'early'", "timestamp_ms > 20000 AND span.name = 'early'",
    "timestamp_ms > 1000 AND span.name = 'early'",
    "timestamp_ms >= 2500 AND span.status = 'OK'",
    # together
    "status = 'OK' and tags.team = 'a'", "timestamp_ms > 1000 AND timestamp_ms < 4000 AND status = 'OK'",
    "metadata.user = 'ann' AND tags.team = 'a' AND span.name = 'agent' AND timestamp_ms >= 1000",
    "timestamp_ms > 1000 AND span.name = 'agent'", "name ILIKE 'chat%' AND span.type = 'LLM' AND prompt = 'qa/2'",
    # refused by both
    "state = 'OK' OR status = 'ERROR'", "status = 'OK' OR status = 'ERROR'", "Name = 'summarize'",
    "experiment_id = '1'", "bogus = 'x'", "status = OK", "status =", "status", "status = 'OK';", "(status = 'OK')",
    "status = 'OK' AND (tags.team = 'a')", "tags.team", "tags = 'a'", "span = 'a'", ".status = 'OK'",
    "status == 'OK'", "status <> 'OK'", "status IS NULL", "client_request_id IS NULL", "execution_time_ms IS NULL",
    "timestamp_ms IN (1000)", "timestamp_ms LIKE '1%'", "name IN ('Chat turn')", "tags.team IN ('a', 'b')",
    "tags.team > 'a'", "tags.team = 1", "metadata.user IN ('ann')", "metadata.`mlflow.trace.tokenUsage` LIKE '%5%'",
    "metadata.`mlflow.trace.tokenUsage` RLIKE '5'", "run_id IN ('{run1}')", "prompt = 'qa'", "prompt LIKE 'qa%'",
    "prompt = 'a/b/c'", "prompt IS NULL", "trace.text = 'x'", "trace.text RLIKE 'x'", "span.name IS NULL",
    "span.content = 'x'", "span.content RLIKE 'x'", "span.attributes. = 'x'", "span.attributes RLIKE 'x'",
    "span.foo = 'x'", "span.NAME = 'agent'", "assessment.x = 'y'", "attributes.state = 'OK' OR 1",
    "span.name > 'a'", "span.type = 1",
]

_Search = tuple[str, tuple[str, ...]]

EXTENSIONS: dict[_Search, _Search] = {
    # asyncstore's (filter, order): MLflow's that asks the same.
    ("state = 'OK'", ()): ("status = 'OK'", ()),
    ("attributes.state != 'OK'", ()): ("attributes.status != 'OK'", ()),
    ("trace_id LIKE '%1'", ()): ("request_id LIKE '%1'", ()),
    ("attr.status = 'OK'", ()): ("attributes.status = 'OK'", ()),  # MLflow's run search takes attr.
    ("spans.name = 'agent'", ()): ("span.name = 'agent'", ()),
    ("TAGS.team = 'a'", ()): ("tags.team = 'a'", ()),  # prefixes are case-insensitive
    ("Span.type = 'LLM'", ()): ("span.type = 'LLM'", ()),
    # MLflow's parser reads a bare text (an SQL type name) as no identifier, and a bare
    # timestamp (an SQL function) compared with a fraction as no comparison.
    ("text ILIKE '%timeout%'", ()): ("trace.text ILIKE '%timeout%'", ()),
    ("text LIKE '%MLflow%' AND status = 'OK'", ()): ("trace.text LIKE '%MLflow%' AND status = 'OK'", ()),
    ("timestamp > 1500.5", ()): ("timestamp_ms > 1500.5", ()),
    ("", ("state",)): ("", ("status",)),
    ("", ("TAGS.team DESC",)): ("", ("tags.team DESC",)),
    ("", ("attr.request_id DESC",)): ("", ("request_id DESC",)),
}

ORDERS = [
    ["timestamp_ms"], ["timestamp_ms DESC"], ["timestamp"], ["timestamp ASC"], ["trace.timestamp_ms DESC"],
    ["execution_time_ms"], ["execution_time_ms DESC"], ["execution_time DESC"], ["status"], ["status DESC"],
    ["status asc"], ["status desc"], ["attributes.status"], ["request_id"], ["request_id DESC"], ["experiment_id"],
    ["experiment_id DESC"], ["name"], ["name DESC"], ["trace.name"], ["tags.name"], ["tags.mlflow.traceName DESC"],
    ["run_id"], ["run_id DESC"], ["tags.team"], ["tags.team DESC"], ["tags.`team` DESC"], ["tags.env"],
    ["metadata.user"], ["metadata.user DESC"], ["request_metadata.user"], ["metadata.`mlflow.trace.session`"],
    ["metadata.`mlflow.trace.session` DESC"], ["tags.prompt"], ["status", "timestamp_ms"],
    ["status", "execution_time_ms DESC"], ["tags.team", "name DESC"], ["status DESC", "request_id DESC"],
    ["request_id", "status"], ["metadata.user", "tags.team DESC", "timestamp_ms"],
    # refused by both
    ["metadata.`mlflow.trace.tokenUsage`"], ["metadata.`mlflow.trace.cost` DESC"], ["client_request_id"],
    ["span.name"], ["prompt"], ["text"], ["tags.text"], ["status DESC ASC"], ["bogus"], ["feedback.x"], [""],
    ["timestamp_ms DESC, status"], ["status DOWN"],
]

END_TIME_ORDERS = [["end_time_ms"], ["end_time DESC"], ["attribute.end_time", "status"]]
"""Orders MLflow's grammar takes but its search fails on; asyncstore sorts by the
timestamp plus the duration (the expected order is computed from MLflow's trace infos)."""

MLFLOW_FAILS = [
    ("span.attributes.model IN ('gpt-4o')", []), ("span.attributes.model NOT IN ('gpt-4o')", []),
    ("", ["status", "status DESC"]), ("", ["timestamp_ms", "timestamp"]), ("", ["name", "tags.mlflow.traceName"]),
]
"""MLflow fails on these with an error other than INVALID_PARAMETER; asyncstore refuses.
(On MySQL, MLflow's IN on a span attribute does not fail: it compares the content with
each character of its pattern.)"""

STRICTER = [
    "status = 'OK' AND",  # MLflow drops a dangling AND
    "status = 'OK' AND AND status = 'OK'", "tags.team = 'a' tags.env = 'Prod'",  # ... and ignores a missing one
    "tags. = 'a'", "tags.`` = 'a'",  # empty keys
    "timestamp_ms > '1500'",  # a number is not quoted
    "span.attributes.\"model\" RLIKE 'gpt'",  # MLflow keeps the quotes in the name, asyncstore asks for backquotes
    "span.attributes.'model' RLIKE 'gpt'",
]

BAD_REGEX = ["tags.team RLIKE '('", "tags.team RLIKE '[a-'", "span.attributes.model RLIKE 'gpt('"]

UNSUPPORTED = [
    "feedback.rating = 'good'", "feedback.rating > 3", "feedback.rating IS NULL", "feedback.rating IS NOT NULL",
    "expectation.answer = 'x'", "issue.id = 'x'",
]

DIFFERENT: dict[str, list[int]] = {"run_id = '{run1}' AND run_id = '{run2}'": []}
"""asyncstore's answer, where MLflow keeps only the last ``run_id`` clause."""

PAGED = [
    ("", ["timestamp_ms DESC"]), ("", ["name"]), ("", ["name DESC"]), ("", ["execution_time_ms"]),
    ("", ["tags.team DESC"]), ("", ["metadata.user", "status DESC"]), ("", ["run_id"]),
    ("", ["status", "request_id DESC"]),
    ("span.status != 'UNSET'", ["metadata.`mlflow.trace.session` DESC"]), ("tags.team IS NOT NULL", ["tags.team"]),
]
"""Searches paged two traces at a time, whose pages together must be MLflow's answer."""


def _spans(trace_id: str, timestamp_ms: int, specs: list[_Span]) -> list[Any]:
    """MLflow spans over OpenTelemetry SDK spans: the first is the root of the others."""
    from mlflow.entities import Span
    from mlflow.entities.span import LiveSpan
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    made, parent = [], None
    for name, span_type, status, attributes, start_ms, duration_ms in specs:
        otel = tracer.start_span(name, context=parent, start_time=(timestamp_ms + start_ms) * MS)
        live = LiveSpan(otel, trace_id, span_type=span_type)
        for key, value in attributes.items():
            if key == "inputs":
                live.set_inputs(value)
            elif key == "outputs":
                live.set_outputs(value)
            else:
                live.set_attribute(key, value)
        if status is not None:
            live.set_status(status)
        otel.end(end_time=(timestamp_ms + start_ms + duration_ms) * MS)
        made.append(Span(otel))
        parent = parent or otel_trace.set_span_in_context(otel)
    return made


@pytest.fixture
def mlflow_traces(backend: str, mlflow_uri: str) -> tuple[str, str, list[str], dict[str, str]]:  # noqa: F811
    """An MLflow database with ``TRACES``, written and linked by MLflow."""
    from mlflow.entities import TraceInfo, TraceLocation, TraceState
    from mlflow.entities.model_registry import PromptVersion

    ml = _mlflow_store(mlflow_uri, backend)
    try:
        exp = ml.create_experiment("traced")
        other = ml.create_experiment("other")
        runs = {name: ml.create_run(exp, "u", 0, [], name).info.run_id for name in ("run1", "run2")}
        ids = []
        for i, (timestamp, duration, state, name, tags, metadata, client_id, spans) in enumerate(TRACES):
            trace_id = f"tr-{i + 1:032x}"
            tags = {**tags, **({"mlflow.traceName": name} if name is not None else {})}
            metadata = {**metadata, **({"mlflow.sourceRun": runs["run2"]} if i == 4 else {})}
            metadata = {**metadata, **({"mlflow.sourceRun": runs["run1"]} if i == 5 else {})}
            ml.start_trace(TraceInfo(
                trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(exp), request_time=timestamp,
                execution_duration=duration, state=TraceState(state), tags=tags, trace_metadata=metadata,
                client_request_id=client_id,
            ))
            if spans:
                ml.log_spans(exp, _spans(trace_id, timestamp, spans))
            ids.append(trace_id)
        ml.link_traces_to_run([ids[3]], runs["run1"])
        for i in (0, 3):
            ml.link_prompts_to_trace(ids[i], [PromptVersion("qa", 2, "template")])  # type: ignore[abstract]
        ml.start_trace(TraceInfo(
            trace_id="tr-" + "f" * 32, trace_location=TraceLocation.from_experiment_id(other), request_time=500,
            execution_duration=1, state=TraceState.OK, tags={"team": "a"},
        ))
    finally:
        ml.engine.dispose()
    return mlflow_uri, exp, ids, runs


def _with_runs(text: str, runs: dict[str, str]) -> str:
    return text.replace("{run1}", runs["run1"]).replace("{run2}", runs["run2"])


def _mlflow_outcome(ml: Any, exp: str, ids: list[str], filter_string: str, order: list[str]) -> Any:
    """MLflow's trace ids (as indexes into ``ids``), INVALID_PARAMETER, or its failure."""
    from mlflow.exceptions import MlflowException

    try:
        found, _ = ml.search_traces([exp], filter_string, max_results=100, order_by=order)
    except MlflowException as exc:
        return "INVALID_PARAMETER" if exc.error_code == "INVALID_PARAMETER_VALUE" else f"FAILS {exc.error_code}"
    except Exception as exc:  # noqa: BLE001  (MLflow lets database errors through)
        return f"FAILS {type(exc).__name__}"
    return [ids.index(t.trace_id) for t in found]


async def _ours(store: AsyncStore, exp: str, ids: list[str], filter_string: str, order: list[str]) -> Any:
    try:
        page = await store.traces.search([exp], filter_string, order, max_results=100)
    except StoreError as exc:
        assert exc.code is ErrorCode.INVALID_PARAMETER, exc
        return "INVALID_PARAMETER"
    return [ids.index(t.trace_id) for t in page.items]


def test_trace_search_answers_as_mlflow_s(
    backend: str, mlflow_traces: tuple[str, str, list[str], dict[str, str]]
) -> None:
    uri, exp, ids, runs = mlflow_traces
    cases: list[tuple[str, list[str]]] = [(_with_runs(f, runs), []) for f in FILTERS] + [("", o) for o in ORDERS]
    ml = _mlflow_store(uri, backend)
    try:
        expected = [_mlflow_outcome(ml, exp, ids, f, o) for f, o in cases]
        extended = [
            (_mlflow_outcome(ml, exp, ids, ours, list(o)), _mlflow_outcome(ml, exp, ids, theirs, list(their_o)))
            for (ours, o), (theirs, their_o) in EXTENSIONS.items()
        ]
        failing_orders = [_mlflow_outcome(ml, exp, ids, "", o) for o in END_TIME_ORDERS]
        failing = [_mlflow_outcome(ml, exp, ids, f, o) for f, o in MLFLOW_FAILS]
        stricter = [_mlflow_outcome(ml, exp, ids, f, []) for f in STRICTER]
        bad_regex = [_mlflow_outcome(ml, exp, ids, f, []) for f in BAD_REGEX]
        unsupported = [_mlflow_outcome(ml, exp, ids, f, []) for f in UNSUPPORTED]
        different = {_with_runs(f, runs): _mlflow_outcome(ml, exp, ids, _with_runs(f, runs), []) for f in DIFFERENT}
        infos = {t.trace_id: t for t in ml.search_traces([exp], max_results=100)[0]}
    finally:
        ml.engine.dispose()
    # MLflow's side of each listed difference is as described.
    assert all(isinstance(answer, list) for answer in expected[: len(FILTERS)] if answer != "INVALID_PARAMETER")
    assert all(mine == "INVALID_PARAMETER" and isinstance(theirs, list) for mine, theirs in extended), extended
    if backend == "mysql":
        failing = failing[2:]
    assert all(str(outcome).startswith("FAILS") for outcome in failing + failing_orders), (failing, failing_orders)
    assert all(isinstance(outcome, list) for outcome in stricter + unsupported), (stricter, unsupported)
    assert all(outcome == [] or str(outcome).startswith("FAILS") for outcome in bad_regex), bad_regex
    assert all(answer != DIFFERENT[f] and isinstance(answer, list) for f, answer in zip(DIFFERENT, different.values()))

    def end(t: str) -> int:  # end_time_ms: the timestamp plus the duration (0 when unknown)
        return int(infos[t].request_time + (infos[t].execution_duration or 0))

    by_end = [ids.index(t) for t in sorted(ids, key=lambda t: (end(t), -infos[t].request_time, t))]
    by_end_desc = [ids.index(t) for t in sorted(ids, key=lambda t: (-end(t), -infos[t].request_time, t))]
    by_end_status = [
        ids.index(t) for t in sorted(ids, key=lambda t: (end(t), infos[t].state.value, -infos[t].request_time, t))
    ]
    assert by_end != sorted(by_end) and len(set(map(end, ids))) < len(ids)  # neither insertion order nor without ties

    async def run() -> None:
        async with AsyncStore.open(uri) as store:
            got = [await _ours(store, exp, ids, f, o) for f, o in cases]
            differ = [
                f"filter {f!r} order {o}: MLflow {want}, asyncstore {have}"
                for (f, o), want, have in zip(cases, expected, got)
                if have != want
            ]
            for ((ours, our_order), theirs), (_, want) in zip(EXTENSIONS.items(), extended):
                if (have := await _ours(store, exp, ids, ours, list(our_order))) != want:
                    differ.append(f"extension {ours!r} {our_order}: MLflow's {theirs} gives {want}, asyncstore {have}")
            for order, want in zip(END_TIME_ORDERS, (by_end, by_end_desc, by_end_status)):
                if (have := await _ours(store, exp, ids, "", order)) != want:
                    differ.append(f"order {order}: expected {want}, asyncstore {have}")
            for f, o in [*MLFLOW_FAILS, *((f, []) for f in STRICTER + BAD_REGEX + UNSUPPORTED)]:
                if (have := await _ours(store, exp, ids, f, o)) != "INVALID_PARAMETER":
                    differ.append(f"filter {f!r} order {o}: asyncstore answers {have}, should refuse")
            for f, want in DIFFERENT.items():
                if (have := await _ours(store, exp, ids, _with_runs(f, runs), [])) != want:
                    differ.append(f"filter {f!r}: asyncstore answers {have}, not {want}")
            assert not differ, "\n".join(differ)
            with pytest.raises(StoreError, match="assessments, which asyncstore does not store"):
                await store.traces.search([exp], "feedback.rating = 'good'")
            with pytest.raises(StoreError, match="not a valid regular expression"):
                await store.traces.search([exp], "tags.team RLIKE '('")

    asyncio.run(run())


def test_paging_gives_mlflow_s_order(backend: str, mlflow_traces: tuple[str, str, list[str], dict[str, str]]) -> None:
    """Pages of two traces, each search resumed from its page token, add up to MLflow's
    answer, whatever the order keys (NULLs, ties, strings, several keys)."""
    uri, exp, ids, _ = mlflow_traces
    ml = _mlflow_store(uri, backend)
    try:
        expected = [_mlflow_outcome(ml, exp, ids, f, o) for f, o in PAGED]
    finally:
        ml.engine.dispose()
    assert all(isinstance(e, list) and len(e) > 2 for e in expected), expected

    async def paged(store: AsyncStore, filter_string: str, order: list[str]) -> list[int]:
        out: list[int] = []
        token = None
        while True:
            page = await store.traces.search([exp], filter_string, order, max_results=2, page_token=token)
            out += [ids.index(t.trace_id) for t in page.items]
            token = page.next_page_token
            if token is None:
                return out

    async def run() -> list[list[int]]:
        async with AsyncStore.open(uri) as store:
            return [await paged(store, f, o) for f, o in PAGED]

    got = asyncio.run(run())
    differ = [f"{f!r} {o}: MLflow {want}, asyncstore {have}" for (f, o), want, have in zip(PAGED, expected, got)]
    differ = [line for line, want, have in zip(differ, expected, got) if have != want]
    assert not differ, "\n".join(differ)
