"""Parser for MLflow-style search filter and order-by strings.

The grammar is MLflow's ``search_runs`` grammar: clauses joined by ``AND``, each
``<identifier> <comparator> <value>``, where an identifier is ``<prefix>.<key>``
(``metrics.acc``, ``params.\\`model type\\```, ``tags."mlflow.user"``) or a bare key
of the default entity (``status``). Keywords are case-insensitive; string values are
quoted with ``'`` or ``"``; numbers are plain literals; ``IN`` / ``NOT IN`` take a
parenthesised tuple of strings; ``IS NULL`` / ``IS NOT NULL`` take no value; ``RLIKE``
takes a regular expression (trace search only).

The parser is generic: the caller passes a :class:`Grammar` saying which entity
types exist (with their prefixes), which keys each allows, the value type of each
key and the comparators allowed on it, and which keys stand for another entity's key
(MLflow's trace search reads ``name`` as the tag ``mlflow.traceName``). It returns plain :class:`Clause` /
:class:`OrderBy` objects; the repositories turn them into SQLAlchemy expressions with
bound parameters, so no input string ever reaches SQL text. Every error is an
:class:`~asyncstore.errors.InvalidParameter` that names the offending token, its
position and what is allowed there.

Example::

    grammar = Grammar(entities=(EntitySpec("metric", ("metrics", "metric"), NUMBER_KEY),))
    parse_filter("metrics.acc > 0.9", grammar)
    # [Clause(entity='metric', key='acc', comparator='>', value=0.9, position=0)]
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Union

from asyncstore.errors import InvalidParameter
from asyncstore.filter_tokens import Token, TokenKind, syntax_error, tokenize

FILTER_MAX_LENGTH = 10_000
"""Longer filter strings are refused before parsing (no real filter is that long)."""

Value = Union[str, int, float, tuple[str, ...], None]


class ValueType(str, enum.Enum):
    """What kind of literal a key is compared with."""

    NUMBER = "number"
    STRING = "string"


# Canonical comparator spellings (what Clause.comparator holds).
EQ, NE, GT, GE, LT, LE = "=", "!=", ">", ">=", "<", "<="
LIKE, ILIKE, IN, NOT_IN, IS_NULL, IS_NOT_NULL = "LIKE", "ILIKE", "IN", "NOT IN", "IS NULL", "IS NOT NULL"
RLIKE = "RLIKE"

NUMERIC_COMPARATORS = frozenset({EQ, NE, GT, GE, LT, LE})
STRING_COMPARATORS = frozenset({EQ, NE, LIKE, ILIKE})
NULLABLE_STRING_COMPARATORS = STRING_COMPARATORS | {IS_NULL, IS_NOT_NULL}
SET_STRING_COMPARATORS = STRING_COMPARATORS | {IN, NOT_IN}

_COMPARATOR_ORDER = (EQ, NE, GT, GE, LT, LE, LIKE, ILIKE, RLIKE, IN, NOT_IN, IS_NULL, IS_NOT_NULL)


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """What one key (or every key of a free-form entity) allows.

    Attributes:
        value_type: the literal type it is compared with.
        comparators: the canonical comparators allowed on it.
        orderable: whether it may appear in an order-by.
    """

    value_type: ValueType
    comparators: frozenset[str]
    orderable: bool = True


NUMBER_KEY = KeySpec(ValueType.NUMBER, NUMERIC_COMPARATORS)
STRING_KEY = KeySpec(ValueType.STRING, STRING_COMPARATORS)


@dataclasses.dataclass(frozen=True)
class EntitySpec:
    """One entity type of a grammar (``metric``, ``param``, ``tag``, ``attribute``...).

    Attributes:
        name: canonical name, returned in :attr:`Clause.entity`.
        prefixes: the identifier prefixes that name it (``metrics``, ``metric``);
            matched case-insensitively.
        default: the spec of any key not in ``keys`` (free-form keys); None allows
            only the keys listed.
        keys: keys with a spec of their own.
        key_aliases: alternative spellings of keys, mapped to their canonical key.
        key_prefixes: families of keys, ``<prefix><name>`` with any non-empty name
            (``attributes.`` for ``span.attributes.model``); the name may be
            backquoted (``span.attributes.`my key```).
        unsupported: if set, the entity is known but cannot be searched, and this
            says why.
    """

    name: str
    prefixes: tuple[str, ...]
    default: KeySpec | None = None
    keys: Mapping[str, KeySpec] | None = None
    key_aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    key_prefixes: Mapping[str, KeySpec] = dataclasses.field(default_factory=dict)
    unsupported: str | None = None

    def spec_of(self, key: str) -> tuple[str, KeySpec] | None:
        """The canonical key and its spec, or None if the key is not allowed."""
        key = self.key_aliases.get(key, key)
        if self.keys is not None and key in self.keys:
            return key, self.keys[key]
        for prefix, spec in self.key_prefixes.items():
            if key.startswith(prefix) and len(key) > len(prefix):
                return key, spec
        return (key, self.default) if self.default is not None else None

    def describe_keys(self) -> str:
        """Human-readable list of the allowed keys (for error messages)."""
        if self.default is not None:
            return "any key"
        return ", ".join([*sorted(self.keys or {}), *(f"{p}<name>" for p in self.key_prefixes)])


@dataclasses.dataclass(frozen=True)
class Grammar:
    """The entity types a search accepts.

    Attributes:
        entities: the entity specs; their prefixes must not overlap.
        default_entity: the entity of an identifier without a prefix (MLflow: the
            attributes), or None to require a prefix.
        redirects: keys that stand for another key, matched case-insensitively, in
            the entities of ``redirect_from``: key -> (entity, key), entity None for
            the same entity. MLflow's trace search reads ``name`` as the tag
            ``mlflow.traceName`` whether it is written ``name``, ``tags.name`` or
            ``metadata.Name``. The key must be allowed as written; the clause then
            takes the target's comparators and value type, and may be ordered by
            only if both the key as written and its target may be.
        redirect_from: the entities whose keys are redirected.
    """

    entities: tuple[EntitySpec, ...]
    default_entity: str | None = None
    redirects: Mapping[str, tuple[str | None, str]] = dataclasses.field(default_factory=dict)
    redirect_from: frozenset[str] = frozenset()

    def entity_for_prefix(self, prefix: str) -> EntitySpec | None:
        """The entity named by an identifier prefix, or None."""
        lowered = prefix.lower()
        for entity in self.entities:
            if lowered in entity.prefixes:
                return entity
        return None

    def entity(self, name: str) -> EntitySpec:
        """The entity with this canonical name."""
        for entity in self.entities:
            if entity.name == name:
                return entity
        raise KeyError(name)

    def describe_prefixes(self) -> str:
        """Human-readable list of the allowed prefixes (for error messages)."""
        return ", ".join(f"{p}." for entity in self.entities for p in entity.prefixes)


@dataclasses.dataclass(frozen=True)
class Clause:
    """One ``<identifier> <comparator> <value>`` clause of a filter.

    Attributes:
        entity: canonical entity name (``metric``, ``attribute``...).
        key: canonical key (``acc``, ``start_time``).
        comparator: canonical comparator (``=``, ``LIKE``, ``NOT IN``, ``IS NULL``...).
        value: a number, a string, a tuple of strings (IN / NOT IN) or None (IS [NOT] NULL).
        position: character offset of the clause in the filter string.
    """

    entity: str
    key: str
    comparator: str
    value: Value
    position: int = 0


@dataclasses.dataclass(frozen=True)
class OrderBy:
    """One order-by item.

    Attributes:
        entity: canonical entity name.
        key: canonical key.
        ascending: True for ASC (the default), False for DESC.
    """

    entity: str
    key: str
    ascending: bool = True


class _Key(NamedTuple):
    """An identifier read: its entity, canonical key and spec, where it starts, and
    how messages name it."""

    entity: EntitySpec
    key: str
    spec: KeySpec
    start: int
    label: str


class _Parser:
    """Recursive-descent parser over a token list."""

    def __init__(self, text: str, grammar: Grammar) -> None:
        self.text = text
        self.grammar = grammar
        self.tokens = tokenize(text)
        self.i = 0

    # --- helpers
    def peek(self, offset: int = 0) -> Token | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def pos(self) -> int:
        tok = self.peek()
        return tok.start if tok is not None else len(self.text)

    def fail(self, message: str, position: int | None = None) -> InvalidParameter:
        return syntax_error(self.text, self.pos() if position is None else position, message)

    def is_keyword(self, word: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind is TokenKind.WORD and tok.text.upper() == word

    def at_end(self) -> bool:
        return self.i >= len(self.tokens)

    # --- identifiers
    def identifier(self) -> _Key:
        """Read ``prefix.key`` / bare key (following a redirect)."""
        tok = self.peek()
        if tok is None:
            raise self.fail(f"expected an identifier such as {self._example()}")
        start = tok.start
        if tok.kind is TokenKind.WORD:
            self.i += 1
            word = tok.text
            prefix, dot, rest = word.partition(".")
            if not dot:
                entity = self._default_entity(word, start)
                key = word
            else:
                named = self.grammar.entity_for_prefix(prefix)
                if named is None:
                    raise self.fail(
                        f"unknown entity type {prefix!r}; allowed prefixes: {self.grammar.describe_prefixes()}",
                        start,
                    )
                entity = named
                if entity.unsupported is not None:
                    raise self.fail(entity.unsupported, start)
                nxt = self.peek()
                glued = nxt is not None and nxt.start == tok.end
                if rest == "" and glued and nxt is not None and nxt.kind in (TokenKind.BACKQUOTED, TokenKind.STRING):
                    self.i += 1
                    key = nxt.text
                    if nxt.kind is TokenKind.STRING and nxt.quote == "'":
                        raise self.fail("quote a key with backquotes or double quotes, not single quotes", nxt.start)
                elif rest in entity.key_prefixes and glued and nxt is not None and nxt.kind is TokenKind.BACKQUOTED:
                    self.i += 1
                    key = rest + nxt.text
                elif rest in entity.key_prefixes and glued and nxt is not None and nxt.kind is TokenKind.STRING:
                    raise self.fail(f"quote the name after {word!r} with backquotes: {word}`name`", nxt.start)
                elif rest == "":
                    raise self.fail(
                        f"missing key after {prefix + '.'!r}; write {prefix}.<key>, "
                        f"or {prefix}.`key with spaces`",
                        start,
                    )
                else:
                    key = rest
        elif tok.kind is TokenKind.BACKQUOTED or (tok.kind is TokenKind.STRING and tok.quote == '"'):
            self.i += 1
            entity = self._default_entity(tok.text, start)
            key = tok.text
        else:
            raise self.fail(f"expected an identifier such as {self._example()}, got {tok.text!r}")
        if key == "":
            raise self.fail("empty key", start)
        found = entity.spec_of(key)
        if found is None:
            raise self.fail(
                f"unknown {entity.name} key {key!r}; allowed: {entity.describe_keys()}", start
            )
        canonical, spec = found
        target = self.grammar.redirects.get(key.lower()) if entity.name in self.grammar.redirect_from else None
        if target is None:
            return _Key(entity, canonical, spec, start, f"{entity.name} {canonical!r}")
        to_entity = entity if target[0] is None else self.grammar.entity(target[0])
        to_found = to_entity.spec_of(target[1])
        if to_found is None:  # pragma: no cover - a grammar whose redirect names an unknown key
            raise self.fail(f"{key!r} stands for {to_entity.name} key {target[1]!r}, which is not allowed", start)
        to_key, to_spec = to_found
        merged = dataclasses.replace(
            to_spec,
            comparators=to_spec.comparators if spec.comparators else frozenset(),
            orderable=spec.orderable and to_spec.orderable,
        )
        return _Key(to_entity, to_key, merged, start, f"{key!r} (the {to_entity.name} {to_key!r})")

    def _default_entity(self, word: str, position: int) -> EntitySpec:
        if self.grammar.default_entity is None:
            raise self.fail(
                f"identifier {word!r} needs a prefix; allowed prefixes: {self.grammar.describe_prefixes()}",
                position,
            )
        return self.grammar.entity(self.grammar.default_entity)

    def _example(self) -> str:
        entity = self.grammar.entities[0]
        return f"{entity.prefixes[0]}.<key>"

    # --- filter
    def clause(self) -> Clause:
        ident = self.identifier()
        comparator = self.comparator(ident)
        value = self.value(comparator, ident)
        return Clause(ident.entity.name, ident.key, comparator, value, ident.start)

    def comparator(self, ident: _Key) -> str:
        tok = self.peek()
        spec = ident.spec
        allowed = ", ".join(c for c in _COMPARATOR_ORDER if c in spec.comparators)
        where = ident.label
        if tok is None:
            raise self.fail(f"expected a comparator after {where}; allowed: {allowed}")
        start = tok.start
        found: str | None = None
        if tok.kind is TokenKind.OPERATOR:
            found = tok.text
            self.i += 1
        elif tok.kind is TokenKind.WORD:
            word = tok.text.upper()
            if word in (LIKE, ILIKE, RLIKE, IN):
                found = word
                self.i += 1
            elif word == "NOT" and self.is_keyword("IN", 1):
                found = NOT_IN
                self.i += 2
            elif word == "IS":
                if self.is_keyword("NULL", 1):
                    found, self.i = IS_NULL, self.i + 2
                elif self.is_keyword("NOT", 1) and self.is_keyword("NULL", 2):
                    found, self.i = IS_NOT_NULL, self.i + 3
                else:
                    raise self.fail("expected IS NULL or IS NOT NULL", start)
        if found is None:
            raise self.fail(f"expected a comparator after {where}, got {tok.text!r}; allowed: {allowed}", start)
        if not spec.comparators:
            raise self.fail(f"{where} cannot be used in a filter, only in order_by", start)
        if found not in spec.comparators:
            raise self.fail(f"comparator {found} is not allowed on {where}; allowed: {allowed}", start)
        return found

    def value(self, comparator: str, ident: _Key) -> Value:
        if comparator in (IS_NULL, IS_NOT_NULL):
            return None
        spec = ident.spec
        where = ident.label
        if comparator in (IN, NOT_IN):
            return self.string_tuple(where)
        tok = self.peek()
        if tok is None:
            raise self.fail(f"expected a value after {comparator}")
        if comparator in (LIKE, ILIKE, RLIKE) or spec.value_type is ValueType.STRING:
            if tok.kind is not TokenKind.STRING:
                raise self.fail(
                    f"{where} is compared with a quoted string ('value' or \"value\"), got {tok.text!r}",
                    tok.start,
                )
            self.i += 1
            return tok.text
        if tok.kind is not TokenKind.NUMBER:
            raise self.fail(f"{where} is compared with a number (such as 0.5 or 10), got {tok.text!r}", tok.start)
        self.i += 1
        return _number(tok.text)

    def string_tuple(self, where: str) -> tuple[str, ...]:
        tok = self.peek()
        if tok is None or tok.kind is not TokenKind.LPAREN:
            raise self.fail(f"IN and NOT IN on {where} take a parenthesised list of strings, e.g. ('a', 'b')")
        self.i += 1
        items: list[str] = []
        while True:
            tok = self.peek()
            if tok is None or tok.kind is not TokenKind.STRING:
                raise self.fail(f"expected a quoted string in the list for {where}")
            items.append(tok.text)
            self.i += 1
            tok = self.peek()
            if tok is not None and tok.kind is TokenKind.COMMA:
                self.i += 1
                continue
            if tok is not None and tok.kind is TokenKind.RPAREN:
                self.i += 1
                return tuple(items)
            raise self.fail("expected ',' or ')' in the list of values")

    def filter(self) -> list[Clause]:
        clauses: list[Clause] = []
        if self.at_end():
            return clauses
        while True:
            clauses.append(self.clause())
            if self.at_end():
                return clauses
            tok = self.tokens[self.i]
            if self.is_keyword("AND"):
                self.i += 1
                if self.at_end():
                    raise self.fail("expected a clause after AND")
                continue
            if self.is_keyword("OR"):
                raise self.fail("OR is not supported; clauses can only be joined by AND", tok.start)
            raise self.fail(f"expected AND or the end of the filter, got {tok.text!r}", tok.start)

    def order_by(self) -> OrderBy:
        ident = self.identifier()
        if not ident.spec.orderable:
            raise self.fail(f"{ident.label} cannot be used to order results", ident.start)
        ascending = True
        if self.is_keyword("ASC"):
            self.i += 1
        elif self.is_keyword("DESC"):
            ascending = False
            self.i += 1
        if not self.at_end():
            tok = self.tokens[self.i]
            raise self.fail(f"expected ASC, DESC or the end of the order-by item, got {tok.text!r}", tok.start)
        return OrderBy(ident.entity.name, ident.key, ascending)


# --- MLflow's run search grammar --------------------------------------------------

RUN_ATTRIBUTE_KEYS: Mapping[str, KeySpec] = {
    "run_id": KeySpec(ValueType.STRING, SET_STRING_COMPARATORS),
    "run_name": KeySpec(ValueType.STRING, SET_STRING_COMPARATORS),
    "status": KeySpec(ValueType.STRING, SET_STRING_COMPARATORS),
    "user_id": KeySpec(ValueType.STRING, SET_STRING_COMPARATORS),
    "artifact_uri": KeySpec(ValueType.STRING, SET_STRING_COMPARATORS),
    "start_time": NUMBER_KEY,
    "end_time": NUMBER_KEY,
}

RUN_GRAMMAR = Grammar(
    entities=(
        EntitySpec("metric", ("metrics", "metric"), default=NUMBER_KEY),
        EntitySpec("param", ("params", "param", "parameters", "parameter"),
                   default=KeySpec(ValueType.STRING, NULLABLE_STRING_COMPARATORS)),
        EntitySpec("tag", ("tags", "tag"), default=KeySpec(ValueType.STRING, NULLABLE_STRING_COMPARATORS)),
        EntitySpec(
            "attribute",
            ("attributes", "attribute", "attr", "run"),
            keys=RUN_ATTRIBUTE_KEYS,
            # MLflow's alternative spellings of attributes.
            key_aliases={"created": "start_time", "Created": "start_time", "run name": "run_name",
                         "Run name": "run_name", "Run Name": "run_name"},
        ),
    ),
    default_entity="attribute",
)
"""MLflow's ``search_runs`` grammar: metrics, params, tags and run attributes."""


def _number(text: str) -> int | float:
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return float(text)


def parse_filter(text: str | None, grammar: Grammar) -> list[Clause]:
    """Parse a filter string into clauses (an empty or blank string gives none).

    Args:
        text: the filter, e.g. ``"metrics.acc > 0.9 and params.model = 'cnn'"``.
        grammar: the entity types, keys and comparators allowed.

    Raises:
        InvalidParameter: the string is malformed, or names an unknown entity type or
            key, or uses a comparator or value type not allowed for its key.
    """
    if text is None:
        return []
    if not isinstance(text, str):
        raise InvalidParameter(f"filter_string must be a string, got {type(text).__name__}")
    if len(text) > FILTER_MAX_LENGTH:
        raise InvalidParameter(f"filter string is {len(text)} characters long; the limit is {FILTER_MAX_LENGTH}")
    return _Parser(text, grammar).filter()


def parse_order_by(items: Sequence[str] | None, grammar: Grammar) -> list[OrderBy]:
    """Parse order-by items, each ``<identifier> [ASC|DESC]``.

    Args:
        items: e.g. ``["metrics.acc DESC", "attributes.start_time"]``.
        grammar: the entity types and keys allowed.

    Raises:
        InvalidParameter: an item is malformed or names a key that cannot be ordered by.
    """
    if items is None:
        return []
    if isinstance(items, str):
        raise InvalidParameter("order_by must be a list of strings such as ['metrics.acc DESC'], not one string")
    result: list[OrderBy] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise InvalidParameter(f"order_by item {item!r} must be a non-empty string such as 'metrics.acc DESC'")
        if len(item) > FILTER_MAX_LENGTH:
            raise InvalidParameter(f"order_by item is {len(item)} characters long; the limit is {FILTER_MAX_LENGTH}")
        result.append(_Parser(item, grammar).order_by())
    return result


__all__ = [
    "Clause",
    "EntitySpec",
    "Grammar",
    "KeySpec",
    "NULLABLE_STRING_COMPARATORS",
    "NUMBER_KEY",
    "NUMERIC_COMPARATORS",
    "OrderBy",
    "RLIKE",
    "RUN_GRAMMAR",
    "SET_STRING_COMPARATORS",
    "STRING_COMPARATORS",
    "STRING_KEY",
    "Token",
    "TokenKind",
    "ValueType",
    "parse_filter",
    "parse_order_by",
    "tokenize",
]
