"""The filter / order-by parser (no database)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncstore.errors import InvalidParameter
from asyncstore.filters import (
    RUN_GRAMMAR,
    STRING_KEY,
    Clause,
    EntitySpec,
    Grammar,
    KeySpec,
    OrderBy,
    TokenKind,
    ValueType,
    parse_filter,
    parse_order_by,
    tokenize,
)


def parse(text: str) -> list[Clause]:
    return parse_filter(text, RUN_GRAMMAR)


def triples(text: str) -> list[tuple[str, str, str, object]]:
    return [(c.entity, c.key, c.comparator, c.value) for c in parse(text)]


def test_empty_filter_has_no_clauses() -> None:
    assert parse("") == []
    assert parse("   ") == []
    assert parse_filter(None, RUN_GRAMMAR) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metrics.acc > 0.9", ("metric", "acc", ">", 0.9)),
        ("metric.acc >= 1", ("metric", "acc", ">=", 1)),
        ("metrics.loss < -1.5e-3", ("metric", "loss", "<", -1.5e-3)),
        ("metrics.loss<=2", ("metric", "loss", "<=", 2)),
        ("metrics.a != 0", ("metric", "a", "!=", 0)),
        ("metrics.acc.val = .5", ("metric", "acc.val", "=", 0.5)),
        ("params.model = 'cnn'", ("param", "model", "=", "cnn")),
        ('param.model = "cnn"', ("param", "model", "=", "cnn")),
        ("parameter.lr LIKE '0.0%'", ("param", "lr", "LIKE", "0.0%")),
        ("parameters.lr ilike '%E-3'", ("param", "lr", "ILIKE", "%E-3")),
        ("params.x is null", ("param", "x", "IS NULL", None)),
        ("tags.owner IS NOT NULL", ("tag", "owner", "IS NOT NULL", None)),
        ("tag.`mlflow.user` = 'me'", ("tag", "mlflow.user", "=", "me")),
        ('tags."mlflow.user" = \'me\'', ("tag", "mlflow.user", "=", "me")),
        ("metrics.`f1 score` > 0", ("metric", "f1 score", ">", 0)),
        ("attributes.status = 'RUNNING'", ("attribute", "status", "=", "RUNNING")),
        ("attr.run_id IN ('a', 'b')", ("attribute", "run_id", "IN", ("a", "b"))),
        ("run.run_name not in ('x')", ("attribute", "run_name", "NOT IN", ("x",))),
        ("status != 'FAILED'", ("attribute", "status", "!=", "FAILED")),
        ("start_time >= 1700000000000", ("attribute", "start_time", ">=", 1700000000000)),
        ("attributes.created < 5", ("attribute", "start_time", "<", 5)),
        ("attributes.`Run Name` = 'r'", ("attribute", "run_name", "=", "r")),
        ("`user_id` = 'u'", ("attribute", "user_id", "=", "u")),
        ("params.p = 'it''s'", ("param", "p", "=", "it's")),
        ("params.p = 'it\\'s'", ("param", "p", "=", "it's")),
        ("params.p = ''", ("param", "p", "=", "")),
        ("Metrics.acc > 1", ("metric", "acc", ">", 1)),
    ],
)
def test_single_clause(text: str, expected: tuple[str, str, str, object]) -> None:
    assert triples(text) == [expected]


def test_clauses_joined_by_and_in_any_case() -> None:
    text = "metrics.acc > 0.9 and params.model = 'cnn' AND tags.t LIKE 'x%' aNd status = 'FINISHED'"
    assert triples(text) == [
        ("metric", "acc", ">", 0.9),
        ("param", "model", "=", "cnn"),
        ("tag", "t", "LIKE", "x%"),
        ("attribute", "status", "=", "FINISHED"),
    ]
    positions = [c.position for c in parse(text)]
    assert positions == [0, text.index("params"), text.index("tags"), text.index("status")]


def test_string_value_may_contain_keywords_and_operators() -> None:
    assert triples("params.q = 'a AND b >= c'") == [("param", "q", "=", "a AND b >= c")]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("metrics.acc", "expected a comparator"),
        ("metrics.acc >", "expected a value"),
        ("metrics.acc > 'high'", "compared with a number"),
        ("metrics.acc LIKE '1%'", "comparator LIKE is not allowed on metric 'acc'"),
        ("params.p > 'a'", "comparator > is not allowed on param 'p'; allowed: =, !=, LIKE, ILIKE, IS NULL"),
        ("params.p = 3", "compared with a quoted string"),
        ("tags.t IN ('a')", "comparator IN is not allowed"),
        ("attributes.start_time LIKE '1%'", "not allowed on attribute 'start_time'"),
        ("attributes.start_time IS NULL", "not allowed"),
        ("attributes.nope = 'x'", "unknown attribute key 'nope'; allowed: artifact_uri, end_time"),
        ("nope = 'x'", "unknown attribute key 'nope'"),
        ("foo.bar = 'x'", "unknown entity type 'foo'; allowed prefixes: metrics., metric."),
        ("metrics. = 1", "missing key after 'metrics.'"),
        ("metrics.a > 1 OR metrics.b > 1", "OR is not supported"),
        ("metrics.a > 1 metrics.b > 1", "expected AND or the end"),
        ("metrics.a > 1 AND", "expected a clause after AND"),
        ("AND metrics.a > 1", "unknown attribute key 'AND'"),
        ("params.p = 'open", "unterminated string"),
        ("tags.`open = 'x'", "unterminated backquote"),
        ("metrics.a > 1 ; DROP TABLE runs", "unexpected character ';'"),
        ("status IN 'a'", "parenthesised list"),
        ("status IN ('a' 'b')", "expected ',' or ')'"),
        ("status IN ()", "expected a quoted string in the list"),
        ("status IN (1)", "expected a quoted string in the list"),
        ("params.p IS 'x'", "expected IS NULL or IS NOT NULL"),
        ("params.'p' = 'x'", "not single quotes"),
        ("= 1", "expected an identifier"),
        ("metrics.a == 1", "compared with a number"),
        ("metrics.a <> 1", "compared with a number"),
    ],
)
def test_errors_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        parse(text)
    assert fragment in str(info.value)
    assert "position" in str(info.value)


def test_error_points_at_the_offending_token() -> None:
    text = "metrics.acc > 1 and params.p > 'x'"
    with pytest.raises(InvalidParameter) as info:
        parse(text)
    assert f"position {text.index('> ' + repr('x'))}" in str(info.value)


def test_too_long_filter_is_refused() -> None:
    with pytest.raises(InvalidParameter, match="limit is 10000"):
        parse("metrics.a > 1 AND " * 1000 + "metrics.a > 1")


def test_non_string_filter_is_refused() -> None:
    with pytest.raises(InvalidParameter, match="must be a string"):
        parse_filter(42, RUN_GRAMMAR)  # type: ignore[arg-type]


def test_tokenize_reports_spans_and_kinds() -> None:
    tokens = tokenize("tags.`a b` = \"x\" AND m IN ('1', '2')")
    assert [t.kind for t in tokens] == [
        TokenKind.WORD, TokenKind.BACKQUOTED, TokenKind.OPERATOR, TokenKind.STRING, TokenKind.WORD,
        TokenKind.WORD, TokenKind.WORD, TokenKind.LPAREN, TokenKind.STRING, TokenKind.COMMA,
        TokenKind.STRING, TokenKind.RPAREN,
    ]
    assert tokens[1].text == "a b" and (tokens[1].start, tokens[1].end) == (5, 10)


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("metrics.acc", OrderBy("metric", "acc", True)),
        ("metrics.acc DESC", OrderBy("metric", "acc", False)),
        ("metrics.`f1 score` asc", OrderBy("metric", "f1 score", True)),
        ("params.lr desc", OrderBy("param", "lr", False)),
        ("tags.t", OrderBy("tag", "t", True)),
        ("attributes.start_time DESC", OrderBy("attribute", "start_time", False)),
        ("start_time", OrderBy("attribute", "start_time", True)),
        ("run_name", OrderBy("attribute", "run_name", True)),
    ],
)
def test_order_by(item: str, expected: OrderBy) -> None:
    assert parse_order_by([item], RUN_GRAMMAR) == [expected]


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        (["metrics.acc DOWN"], "expected ASC, DESC"),
        (["metrics.acc DESC extra"], "expected ASC, DESC"),
        (["nope"], "unknown attribute key 'nope'"),
        ([""], "non-empty string"),
        ([3], "non-empty string"),
        ("metrics.acc", "must be a list"),
        (["foo.x"], "unknown entity type"),
    ],
)
def test_order_by_errors(items: object, fragment: str) -> None:
    with pytest.raises(InvalidParameter, match=fragment):
        parse_order_by(items, RUN_GRAMMAR)  # type: ignore[arg-type]


def test_grammar_is_reusable_for_other_searches() -> None:
    """A trace-search grammar: its own prefixes, keys and a non-orderable key."""
    grammar = Grammar(
        entities=(
            EntitySpec("tag", ("tags", "tag"), default=STRING_KEY),
            EntitySpec("metadata", ("metadata", "request_metadata"), default=STRING_KEY),
            EntitySpec(
                "span",
                ("span",),
                keys={"name": STRING_KEY, "type": KeySpec(ValueType.STRING, frozenset({"="}), orderable=False)},
            ),
            EntitySpec(
                "attribute",
                ("attributes", "trace"),
                keys={"timestamp_ms": KeySpec(ValueType.NUMBER, frozenset({">", "<"})), "status": STRING_KEY},
            ),
        ),
        default_entity="attribute",
    )
    clauses = parse_filter("span.type = 'LLM' and metadata.`mlflow.user` LIKE 'a%' and timestamp_ms > 5", grammar)
    assert [(c.entity, c.key, c.comparator, c.value) for c in clauses] == [
        ("span", "type", "=", "LLM"),
        ("metadata", "mlflow.user", "LIKE", "a%"),
        ("attribute", "timestamp_ms", ">", 5),
    ]
    with pytest.raises(InvalidParameter, match="allowed: =$"):
        parse_filter("span.type != 'x'", grammar)
    with pytest.raises(InvalidParameter, match="cannot be used to order"):
        parse_order_by(["span.type"], grammar)
    with pytest.raises(InvalidParameter, match="allowed prefixes: tags., tag., metadata."):
        parse_filter("metrics.x > 1", grammar)
    no_default = Grammar(entities=grammar.entities)
    with pytest.raises(InvalidParameter, match="needs a prefix"):
        parse_filter("status = 'OK'", no_default)


_ALPHABET = st.sampled_from(
    list("abcmetrsp._`'\"()=!<>,- 0123456789eE%")
    + ["metrics.", "params.", "tags.", "attributes.", " AND ", " and ", " IN ", " NOT ", " IS ", " NULL ",
       " LIKE ", "status", "start_time", "run_id", "'x'", "1.5", "`a b`"]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_ALPHABET, max_size=30).map("".join))
def test_random_token_soup_parses_or_raises_invalid_parameter(text: str) -> None:
    try:
        clauses = parse(text)
    except InvalidParameter as exc:
        assert "position" in str(exc)
    else:
        assert all(isinstance(c, Clause) for c in clauses)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_random_text_parses_or_raises_invalid_parameter(text: str) -> None:
    try:
        parse(text)
        parse_order_by([text or "x"], RUN_GRAMMAR)
    except InvalidParameter:
        pass


_keys = st.text(st.characters(blacklist_characters="`", blacklist_categories=("Cs",)), min_size=1, max_size=10)
_strings = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)


@st.composite
def _clause(draw: st.DrawFn) -> tuple[str, tuple[str, str, str, object]]:
    kind = draw(st.sampled_from(["metric", "param", "tag"]))
    key = draw(_keys)
    if kind == "metric":
        op = draw(st.sampled_from(["=", "!=", ">", ">=", "<", "<="]))
        value: object = draw(st.integers(-10**6, 10**6))
        return f"metrics.`{key}` {op} {value}", (kind, key, op, value)
    op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE"]))
    value = draw(_strings)
    # The grammar's escapes: a backslash escapes a quote or a backslash, a doubled
    # quote is a quote. A value ending in a backslash must have it escaped too.
    quoted = "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"
    prefix = "params" if kind == "param" else "tags"
    return f"{prefix}.`{key}` {op.lower()} {quoted}", (kind, key, op, value)


@settings(max_examples=200, deadline=None)
@given(st.lists(_clause(), min_size=1, max_size=4))
def test_generated_filters_round_trip(parts: list[tuple[str, tuple[str, str, str, object]]]) -> None:
    text = " AND ".join(p[0] for p in parts)
    assert triples(text) == [p[1] for p in parts]


def test_backslashes_in_values_are_escaped_by_a_backslash() -> None:
    # Found by the generated round trip: a value ending in a backslash.
    assert triples("params.p = '\\\\'") == [("param", "p", "=", "\\")]
    assert triples("tags.t = 'a\\\\b\\'c''d'") == [("tag", "t", "=", "a\\b'c'd")]
    with pytest.raises(InvalidParameter, match="unterminated string"):
        parse("params.p = '\\'")
