"""What MLflow 3.17's ``log_spans`` derives from the spans it stores, in plain Python.

Besides each span's ``content``, MLflow's ``SqlAlchemyStore.log_spans`` fills:

* per span (``spans`` columns): ``input_cost``, ``output_cost`` and ``total_cost`` from
  the span attribute ``mlflow.llm.cost`` (a JSON object), ``model_name`` and
  ``model_provider`` from ``mlflow.llm.model`` and ``mlflow.llm.provider`` (at most 500
  characters);
* per trace (``trace_info`` columns): ``session_id`` from the first span carrying
  ``session.id`` (else ``gen_ai.conversation.id``); the six token counts and three costs
  summed over the span tree from ``mlflow.chat.tokenUsage`` and ``mlflow.llm.cost``
  (:func:`rollup`: a span whose ancestor carries the value is already counted in it);
  ``trace_name`` from the root span's ``mlflow.traceTag.mlflow.traceName`` attribute;
  ``request_preview`` and ``response_preview`` from the root span's inputs and outputs
  (:func:`preview`);
* trace tags: the root span's other ``mlflow.traceTag.<key>`` attributes, and the
  attributes of the span resource (:func:`resource_tags`);
* the request metadata ``mlflow.trace.user`` from the first span's ``user.id``.

Each value is read as MLflow reads it (:func:`mlflow_view`): the attribute's JSON text
(``json.dumps`` of the value) and that text decoded. MLflow is lenient with what it
cannot use, and so is this module: a value of the wrong shape derives nothing (a
token usage that is not an object of numbers adds nothing to the trace's counts; a
model name that is not a string is taken as its JSON text, as MLflow takes it). Two
values MLflow refuses, and the batch with them: a session id longer than 250
characters and a trace name longer than 4096 (:class:`Refused`).

When, and whether, a trace's stored values are replaced by these is
:mod:`asyncstore.tracing.ingest`'s business (its docstring lists MLflow's rules).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from asyncstore.errors import InvalidParameter
from asyncstore.rules import check_key
from asyncstore.schema import MODEL_NAME_MAX, SESSION_ID_MAX, TAG_VALUE_MAX, TRACE_NAME_MAX, TRACE_PREVIEW_MAX
from asyncstore.tracing import content
from asyncstore.tracing.analytics import COST_COLUMNS, TOKEN_COLUMNS, TRACE_NAME

CHAT_USAGE = "mlflow.chat.tokenUsage"
LLM_COST = "mlflow.llm.cost"
MODEL = "mlflow.llm.model"
MODEL_PROVIDER = "mlflow.llm.provider"
SESSION_KEYS = ("session.id", "gen_ai.conversation.id")
"""The span attributes holding a session id, the first one present winning."""
USER_KEY = "user.id"
INPUTS = "mlflow.spanInputs"
OUTPUTS = "mlflow.spanOutputs"
TRACE_TAG_PREFIX = "mlflow.traceTag."
"""A root-span attribute ``mlflow.traceTag.<key>`` is the trace tag ``<key>``."""
USER_METADATA = "mlflow.trace.user"
_RESOURCE_SKIPPED = ("telemetry.sdk.", "mlflow.")
"""Resource attributes that do not become tags (OTel SDK bookkeeping, MLflow's own keys)."""

TOKEN_KEYS = TOKEN_COLUMNS[:3]
"""Token counts every summed usage has (0 when no span gives them): input, output, total."""
CACHE_TOKEN_KEYS = TOKEN_COLUMNS[3:]
"""Token counts a summed usage has only when a counted span gives them (the cache's)."""
COST_KEYS = COST_COLUMNS
ANALYTICS_COLUMNS = TOKEN_COLUMNS + COST_COLUMNS

SPAN_KEYS = frozenset((CHAT_USAGE, LLM_COST, MODEL, MODEL_PROVIDER, USER_KEY, *SESSION_KEYS))
"""The attributes that matter on any span (a root's inputs, outputs and tags are read too)."""
_SPAN_COLUMN_KEYS = frozenset((LLM_COST, MODEL, MODEL_PROVIDER))

SpanColumns = tuple["float | None", "float | None", "float | None", "str | None", "str | None"]
"""input_cost, output_cost, total_cost, model_name, model_provider of one span row."""
NO_SPAN_COLUMNS: SpanColumns = (None, None, None, None, None)

Node = tuple[str, "str | None", "dict[str, Any] | None"]
"""A span in the tree :func:`rollup` walks: its id, its parent's id, what it carries."""

_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


class Refused(Exception):
    """A value MLflow's log_spans refuses, and the batch with it (the message says why)."""


# --- reading an attribute as MLflow does ------------------------------------------------------


def mlflow_view(value: Any) -> tuple[str, Any]:
    """The attribute as MLflow's log_spans reads it: (its JSON text, that text decoded).

    The text is ``json.dumps(value)``, as MLflow stores attributes. A string that is
    itself the JSON text of a string, object or array is taken as that text: MLflow
    strips that second layer of encoding before it derives anything.
    """
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (or nested beyond reading): a plain string
            return content.dump(value), value
        if isinstance(inner, (str, dict, list)):
            return value, inner
        return content.dump(value), value
    text = content.dump(value)
    if value is None or type(value) in (bool, int):
        return text, value
    return text, json.loads(text)


def _as_string(value: Any) -> str:
    """The attribute as a string: the string it holds, else its JSON text (MLflow's reading of
    model names, session and user ids, tag values)."""
    text, decoded = mlflow_view(value)
    return decoded if isinstance(decoded, str) else text


def whole_count(value: Any) -> int | None:
    """A token count as MLflow stores it: a whole number that fits a BIGINT, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not number.is_finite() or number != number.to_integral_value() or not _BIGINT_MIN <= number <= _BIGINT_MAX:
        return None
    return int(number)


def finite_float(value: Any) -> float | None:
    """A cost as MLflow stores it: a finite float (numbers and numeric strings), else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _summable(data: dict[str, Any], keys: Iterable[str]) -> bool:
    """Whether every value of ``keys`` that ``data`` holds is a number (MLflow adds them up)."""
    return all(isinstance(data[k], (int, float)) for k in keys if k in data)


def _usage(attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    """The span's token usage object, or None (absent, not an object, or a count not a number)."""
    if CHAT_USAGE not in attributes:
        return None
    decoded = mlflow_view(attributes[CHAT_USAGE])[1]
    return decoded if isinstance(decoded, dict) and _summable(decoded, TOKEN_COLUMNS) else None


def _cost_object(attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    if LLM_COST not in attributes:
        return None
    decoded = mlflow_view(attributes[LLM_COST])[1]
    return decoded if isinstance(decoded, dict) else None


def _dimension(attributes: Mapping[str, Any], key: str) -> str | None:
    if key not in attributes:
        return None
    return _as_string(attributes[key])[:MODEL_NAME_MAX]


def span_columns(attributes: Mapping[str, Any], cost: dict[str, Any] | None) -> SpanColumns:
    """A span row's input_cost, output_cost, total_cost, model_name and model_provider,
    ``cost`` being the span's cost object (:func:`_cost_object`)."""
    cost = cost or {}
    return (
        finite_float(cost.get("input_cost")),
        finite_float(cost.get("output_cost")),
        finite_float(cost.get("total_cost")),
        _dimension(attributes, MODEL),
        _dimension(attributes, MODEL_PROVIDER),
    )


# --- summing over the span tree ---------------------------------------------------------------


def rollup(nodes: Sequence[Node], keys: Sequence[str], optional_keys: Sequence[str], zero: float) -> dict[str, Any] | None:
    """Sum what the spans carry, each top-most carrying span once.

    A span whose ancestor (through any chain of parents among ``nodes``) carries a value
    is not counted: integrations that put the total of their children on a parent span
    would otherwise count it twice. ``keys`` are always in the result (``zero`` when no
    span gives them), ``optional_keys`` only when a counted span has them. Spans whose
    parent is not among ``nodes`` start a tree of their own.

    The spans are visited as MLflow visits them (depth first, the last root first), so
    that float sums come out bit for bit as MLflow's.

    Returns:
        The sums, or None when no span carries anything.
    """
    ids = {span_id for span_id, _, _ in nodes}
    children: dict[str, list[Node]] = {}
    tops: list[Node] = []
    for node in nodes:
        parent = node[1]
        if parent and parent in ids:
            children.setdefault(parent, []).append(node)
        else:
            tops.append(node)
    totals: dict[str, Any] = dict.fromkeys(keys, zero)
    found = False
    pending = [(node, False) for node in tops]
    while pending:
        (span_id, _, data), counted_above = pending.pop()
        if data is not None and not counted_above:
            found = True
            for key in keys:
                totals[key] += data.get(key, zero)
            for key in optional_keys:
                if key in data:
                    totals[key] = totals.get(key, zero) + data[key]
        below = counted_above or data is not None
        pending.extend((child, below) for child in children.get(span_id, ()))
    return totals if found else None


def token_columns(nodes: Sequence[Node]) -> dict[str, int] | None:
    """The trace's token count columns summed over ``nodes`` (usage per span), the counts
    that are not whole numbers left out; None when no span carries a usage."""
    usage = rollup(nodes, TOKEN_KEYS, CACHE_TOKEN_KEYS, 0)
    if usage is None:
        return None
    return {key: n for key in TOKEN_COLUMNS if (n := whole_count(usage.get(key))) is not None}


def cost_columns(nodes: Sequence[Node]) -> dict[str, float] | None:
    """The trace's cost columns summed over ``nodes`` (cost per span); None when no span has one."""
    cost = rollup(nodes, COST_KEYS, (), 0.0)
    if cost is None:
        return None
    return {key: x for key in COST_COLUMNS if (x := finite_float(cost.get(key))) is not None}


# --- the root span: previews and tags ---------------------------------------------------------


def _messages(value: Any) -> list[Any] | None:
    """The chat messages of an OpenAI-style request or response object, as MLflow finds them."""
    while isinstance(value, dict):
        found = value.get("messages")
        if found and isinstance(found, list):
            return [m for m in found if _is_message(m)]
        choices = value.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            message = choices[0].get("message")
            if message and _is_message(message):
                return [message]
        for key in ("input", "output"):
            found = value.get(key)
            if found and isinstance(found, list):
                return [m for m in found if _is_message(m)]
        if "request" not in value:
            return None
        value = value["request"]  # a ResponsesAgent request wraps the OpenAI one
    return None


def _is_message(item: Any) -> bool:
    return isinstance(item, dict) and "role" in item and "content" in item


def _message_text(message: dict[str, Any]) -> Any:
    """A message's text: its string content, or its first text part (whatever that holds)."""
    body = message.get("content")
    if isinstance(body, list):
        for part in body:
            if isinstance(part, str):
                return part
            if isinstance(part, dict) and part.get("type") in ("text", "output_text"):
                return part.get("text")
    elif isinstance(body, str):
        return body
    return ""


def preview(value: Any, role: str) -> str | None:
    """A trace's request (role ``user``) or response (``assistant``) preview from the root
    span's inputs or outputs, as MLflow makes it: the text of the last message of that
    role (else of the last message) when the value is a chat request or response, else the
    value's JSON text; at most 1000 characters, a longer one cut to 997 and ``...``.

    Returns:
        None when no preview can be made (a message whose text is not a string).
    """
    text, decoded = mlflow_view(value)
    chosen: Any = None
    messages = _messages(decoded)
    if messages:
        last = next((m for m in reversed(messages) if m.get("role") == role), messages[-1])
        chosen = _message_text(last)
    chosen = chosen or text
    if not isinstance(chosen, str):
        return None
    return chosen if len(chosen) <= TRACE_PREVIEW_MAX else chosen[: TRACE_PREVIEW_MAX - 3] + "..."


def _tag(key: str, value: str) -> tuple[str, str] | None:
    """A trace tag as MLflow validates it: a valid key (else None) and the value cut to 8000."""
    try:
        check_key("trace tag", key)
    except InvalidParameter:
        return None
    return key, value[:TAG_VALUE_MAX]


def root_tags(attributes: Mapping[str, Any]) -> dict[str, str]:
    """The trace tags a root span's ``mlflow.traceTag.<key>`` attributes set (the trace name
    among them); an invalid key is skipped.

    Raises:
        Refused: a trace name longer than 4096 characters.
    """
    tags: dict[str, str] = {}
    for key, value in attributes.items():
        if isinstance(key, str) and key.startswith(TRACE_TAG_PREFIX):
            tag = _tag(key[len(TRACE_TAG_PREFIX):], _as_string(value))
            if tag is None:
                continue
            if tag[0] == TRACE_NAME and len(tag[1]) > TRACE_NAME_MAX:
                raise Refused(
                    f"attribute {key!r} (the trace name) is {len(tag[1])} characters long: "
                    f"at most {TRACE_NAME_MAX} are allowed"
                )
            tags[tag[0]] = tag[1]
    return tags


def resource_tags(resource: Mapping[str, Any]) -> dict[str, str]:
    """The trace tags a span resource's attributes set (``service.name`` and the like): not
    the OTel SDK's ``telemetry.sdk.*`` nor ``mlflow.*``; non-string values as JSON."""
    tags: dict[str, str] = {}
    for key, value in resource.items():
        if not isinstance(key, str) or key.startswith(_RESOURCE_SKIPPED):
            continue
        try:
            text = value if isinstance(value, str) else json.dumps(value)
        except (TypeError, ValueError):
            continue
        tag = _tag(key, text)
        if tag is not None:
            tags[tag[0]] = tag[1]
    return tags


# --- one trace of a batch ---------------------------------------------------------------------


@dataclasses.dataclass
class TraceFacts:
    """What the spans of one batch say about their trace, gathered span by span
    (:meth:`add`, in batch order) and turned into columns by :meth:`finish`."""

    session_id: str | None = None
    """The first session id found ("" is found, and derives nothing)."""
    user: str | None = None
    """The first ``user.id`` found."""
    root: Mapping[str, Any] | None = None
    """The attributes of the batch's last root span."""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    """Tags from the root spans' attributes (over those of the resource)."""
    resource: dict[str, str] | None = None
    """Tags from the first span with a resource."""
    carried: dict[str, tuple[dict[str, Any] | None, dict[str, Any] | None]] = dataclasses.field(default_factory=dict)
    """span id -> (token usage, cost) of the spans that carry either."""

    def add(self, span_id: str, parent: str | None, attributes: Mapping[str, Any], resource: Mapping[str, Any]) -> SpanColumns:
        """Take in one span (a root, or one with a resource or a :data:`SPAN_KEYS` attribute);
        return its span row's columns.

        Raises:
            Refused: the trace's first session id is longer than 250 characters, or a
                root span names the trace with more than 4096.
        """
        if self.session_id is None:
            key = next((k for k in SESSION_KEYS if k in attributes), None)
            if key is not None:
                self.session_id = _as_string(attributes[key])
                if len(self.session_id) > SESSION_ID_MAX:
                    raise Refused(
                        f"attribute {key!r} (the session id) is {len(self.session_id)} characters long: "
                        f"at most {SESSION_ID_MAX} are allowed"
                    )
        if self.user is None and USER_KEY in attributes:
            self.user = _as_string(attributes[USER_KEY])
            if len(self.user) > TAG_VALUE_MAX:
                raise Refused(f"attribute {USER_KEY!r} is {len(self.user)} characters long: at most {TAG_VALUE_MAX} are allowed")
        if self.resource is None and resource:
            self.resource = resource_tags(resource)
        if parent is None:
            self.root = attributes
            self.tags.update(root_tags(attributes))
        usage, cost = _usage(attributes), _cost_object(attributes)
        columns = NO_SPAN_COLUMNS if _SPAN_COLUMN_KEYS.isdisjoint(attributes) else span_columns(attributes, cost)
        if cost is not None and not _summable(cost, COST_KEYS):
            cost = None  # its span row keeps what it can (span_columns); the trace's sum takes nothing
        if usage is not None or cost is not None:
            self.carried[span_id] = (usage, cost)
        else:
            self.carried.pop(span_id, None)
        return columns

    def forget(self, span_id: str) -> None:
        """A span sent again in the batch without anything to derive: drop what it carried."""
        self.carried.pop(span_id, None)

    def finish(self, spans: Sequence[tuple[str, str | None]]) -> TraceDerived:
        """The derived values of the trace, ``spans`` being its (span id, parent id) in batch order."""
        derived = TraceDerived(session_id=self.session_id or None, user=self.user or None)
        derived.tags = {**(self.resource or {}), **self.tags}
        derived.trace_name = derived.tags.pop(TRACE_NAME, None)
        if self.root is not None:
            derived.request_preview, derived.response_preview = _previews(self.root)
        if self.carried:
            derived.usage_nodes = [(s, p, self.carried.get(s, (None, None))[0]) for s, p in spans]
            derived.cost_nodes = [(s, p, self.carried.get(s, (None, None))[1]) for s, p in spans]
            derived.tokens = token_columns(derived.usage_nodes)
            derived.costs = cost_columns(derived.cost_nodes)
        return derived



def _previews(root: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The request and response previews of a root span. As in MLflow, a request preview
    that cannot be made leaves the response preview unmade too."""
    request = preview(root[INPUTS], "user") if INPUTS in root else None
    if request is None and INPUTS in root:
        return None, None
    response = preview(root[OUTPUTS], "assistant") if OUTPUTS in root else None
    return request, response


@dataclasses.dataclass
class TraceDerived:
    """The values one batch derives for one trace (None: nothing derived)."""

    trace_name: str | None = None
    session_id: str | None = None
    request_preview: str | None = None
    response_preview: str | None = None
    tokens: dict[str, int] | None = None
    """Token count columns summed over the batch's spans; None when none carries a usage."""
    costs: dict[str, float] | None = None
    """Cost columns summed over the batch's spans; None when none carries a cost."""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    user: str | None = None
    usage_nodes: list[Node] = dataclasses.field(default_factory=list)
    """The batch's spans with their usage, for a sum over the stored spans too."""
    cost_nodes: list[Node] = dataclasses.field(default_factory=list)

    @property
    def carries(self) -> bool:
        """Whether the batch's spans of the trace carry a token usage or a cost."""
        return self.tokens is not None or self.costs is not None

    @functools.cached_property
    def span_ids(self) -> frozenset[str]:
        """The ids of the batch's spans of the trace, when it :attr:`carries` something."""
        return frozenset(span_id for span_id, _, _ in self.usage_nodes)

    def analytics(self) -> tuple[Any, ...]:
        """The nine token and cost column values, None where nothing is derived."""
        tokens, costs = self.tokens or {}, self.costs or {}
        return (*(tokens.get(c) for c in TOKEN_COLUMNS), *(costs.get(c) for c in COST_COLUMNS))


# --- a trace that already has spans ------------------------------------------------------------


def stored_nodes(span_id: str, parent: str | None, text: str | bytes) -> tuple[Node, Node] | None:
    """The usage and cost nodes of a stored span from its ``content`` (MLflow's document or
    asyncstore's earlier one); None when the content cannot be read (MLflow skips it too)."""
    try:
        document = content.loads(text)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    attributes = document.get("attributes") or {}
    if not isinstance(attributes, dict):
        return (span_id, parent, None), (span_id, parent, None)
    decoded = {k: content.attribute(attributes[k]) for k in (CHAT_USAGE, LLM_COST) if k in attributes}
    cost = _cost_object(decoded)
    if cost is not None and not _summable(cost, COST_KEYS):
        cost = None
    return (span_id, parent, _usage(decoded)), (span_id, parent, cost)


@dataclasses.dataclass
class StoredTrace:
    """A trace of the batch as the database holds it, read after the batch's trace upsert."""

    finalized: bool
    """``start_trace`` wrote it (metadata ``mlflow.trace.infoFinalized``)."""
    current: tuple[Any, ...]
    """Its nine token and cost columns (:data:`ANALYTICS_COLUMNS`)."""
    usage_nodes: list[Node] = dataclasses.field(default_factory=list)
    """Its stored spans (those the batch sends again left out), with their usage."""
    cost_nodes: list[Node] = dataclasses.field(default_factory=list)


def settled_analytics(derived: TraceDerived, stored: StoredTrace) -> tuple[Any, ...]:
    """The nine token and cost columns of a trace once the batch is written, by MLflow's rules.

    Token counts (and, separately, costs) are left as they are when the batch carries none,
    or when ``start_trace`` set them (the trace is finalized and one of them is set).
    Otherwise they are summed over the whole span tree, the stored spans and the batch's
    (so a parent that totals children sent in an earlier batch is not counted twice), and
    each count that sums to a storable number replaces the stored one.
    """
    n = len(TOKEN_COLUMNS)
    tokens, costs = dict(zip(TOKEN_COLUMNS, stored.current[:n])), dict(zip(COST_COLUMNS, stored.current[n:]))
    if derived.tokens is not None and not (stored.finalized and _any_set(tokens)):
        tokens.update(token_columns([*derived.usage_nodes, *stored.usage_nodes]) or {})
    if derived.costs is not None and not (stored.finalized and _any_set(costs)):
        costs.update(cost_columns([*derived.cost_nodes, *stored.cost_nodes]) or {})
    return (*tokens.values(), *costs.values())


def _any_set(columns: Mapping[str, Any]) -> bool:
    return any(value is not None for value in columns.values())
