"""The trace tag and request metadata that MLflow 3.17 keeps in ``trace_info`` columns.

MLflow 3.17 (its revision ``75868b020152``) moved four of them out of the key/value
tables, and asyncstore's revision 0003 does the same:

* the tag ``mlflow.traceName`` is the column ``trace_name`` (at most 4096 characters);
* the metadata ``mlflow.trace.session`` is ``session_id`` (at most 250 characters);
* the metadata ``mlflow.trace.tokenUsage``, a JSON object of token counts
  (``input_tokens``, ``output_tokens``, ``total_tokens``, ``cache_read_input_tokens``,
  ``cache_creation_input_tokens``, ``cache_creation_input_tokens_above_1hr``), is one
  BIGINT column per count;
* the metadata ``mlflow.trace.cost``, a JSON object of ``input_cost``, ``output_cost``
  and ``total_cost``, is one DOUBLE column per cost.

Written, they go to their columns and never to ``trace_tags`` / ``trace_request_metadata``;
read, they come back as the tag and metadata, the JSON written as MLflow writes it
(``json.dumps`` of the counts and costs that are set, in the order above), and a row of
those tables under one of these keys is ignored, as MLflow ignores it. Search on
``tags.mlflow.traceName`` and ``metadata.mlflow.trace.session`` compares the columns;
on the token usage and the cost, ``=`` / ``!=`` compare with the JSON MLflow would
write, as MLflow's search does.

asyncstore is stricter than MLflow on what it is given: a token usage or cost that is
not a JSON object of those keys with whole-number counts (finite costs) is refused
rather than dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_

from asyncstore import filters as f
from asyncstore.errors import InvalidParameter
from asyncstore.schema import SESSION_ID_MAX, TRACE_NAME_MAX, trace_info

TRACE_NAME = "mlflow.traceName"
SESSION = "mlflow.trace.session"
TOKEN_USAGE = "mlflow.trace.tokenUsage"
COST = "mlflow.trace.cost"

TOKEN_COLUMNS = (
    "input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
    "cache_creation_input_tokens_above_1hr",
)
COST_COLUMNS = ("input_cost", "output_cost", "total_cost")
_JSON_COLUMNS = {TOKEN_USAGE: TOKEN_COLUMNS, COST: COST_COLUMNS}
"""Metadata key -> its JSON object's keys, each also the name of its column."""

PROMOTED_METADATA = frozenset({SESSION, TOKEN_USAGE, COST})
COLUMNS = ("trace_name", "session_id", *TOKEN_COLUMNS, *COST_COLUMNS)
"""Every ``trace_info`` column that holds one of these tags or metadata."""

_BIGINT = 2**63


def tag_columns(tags: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Split validated tags into (the rows of ``trace_tags``, ``trace_info`` columns)."""
    if TRACE_NAME not in tags:
        return dict(tags), {}
    rows = {k: v for k, v in tags.items() if k != TRACE_NAME}
    name = tags[TRACE_NAME]
    if len(name) > TRACE_NAME_MAX:
        raise InvalidParameter(f"tag {TRACE_NAME!r} is {len(name)} characters long: at most {TRACE_NAME_MAX} are allowed")
    return rows, {"trace_name": name}


def metadata_columns(metadata: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
    """Split validated metadata into (the rows of ``trace_request_metadata``, columns)."""
    rows = {k: v for k, v in metadata.items() if k not in PROMOTED_METADATA}
    columns: dict[str, Any] = {}
    if SESSION in metadata:
        session = metadata[SESSION]
        if len(session) > SESSION_ID_MAX:
            raise InvalidParameter(
                f"metadata {SESSION!r} is {len(session)} characters long: at most {SESSION_ID_MAX} are allowed"
            )
        columns["session_id"] = session
    for key, names in _JSON_COLUMNS.items():
        if key in metadata:
            columns.update(_json_columns(key, metadata[key], names))
    return rows, columns


def _json_columns(key: str, text: str, names: tuple[str, ...]) -> dict[str, Any]:
    what = "whole numbers of tokens" if key == TOKEN_USAGE else "finite numbers"
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not value.keys() <= set(names):
        raise InvalidParameter(
            f"metadata {key!r} is {text[:100]!r}: expected a JSON object with some of the keys "
            f"{', '.join(names)}, whose values are {what}"
        )
    columns = {}
    for name, number in value.items():
        ok = isinstance(number, (int, float)) and not isinstance(number, bool)
        if key == TOKEN_USAGE:
            ok = ok and (isinstance(number, int) or (math.isfinite(number) and number == int(number)))
            ok = ok and -_BIGINT <= number < _BIGINT
            number = int(number) if ok else number
        else:
            ok = ok and math.isfinite(number)
            number = float(number) if ok else number
        if not ok:
            raise InvalidParameter(f"metadata {key!r} has {name} = {number!r}: expected {what}")
        columns[name] = number
    return columns


def read_tags(row: Any, tags: dict[str, str]) -> dict[str, str]:
    """The tags of a trace: its ``trace_tags`` rows and its ``trace_name``."""
    tags.pop(TRACE_NAME, None)
    if row.trace_name is not None:
        tags[TRACE_NAME] = row.trace_name
    return tags


def read_metadata(row: Any, metadata: dict[str, str]) -> dict[str, str]:
    """The request metadata of a trace: its rows and the columns, as MLflow reads them."""
    for key in PROMOTED_METADATA:
        metadata.pop(key, None)
    if row.session_id is not None:
        metadata[SESSION] = row.session_id
    for key, names in _JSON_COLUMNS.items():
        values = {name: getattr(row, name) for name in names if getattr(row, name) is not None}
        if values:
            metadata[key] = json.dumps(values)
    return metadata


def search_column(entity: str, key: str) -> Any:
    """The ``trace_info`` column a ``tags.`` / ``metadata.`` filter on ``key`` compares,
    or None when the key is kept in rows (the token usage and cost: see
    :func:`json_condition`)."""
    if entity == "tag" and key == TRACE_NAME:
        return trace_info.c.trace_name
    if entity == "metadata" and key == SESSION:
        return trace_info.c.session_id
    return None


def is_json_key(entity: str, key: str) -> bool:
    return entity == "metadata" and key in _JSON_COLUMNS


def json_condition(clause: f.Clause) -> ColumnElement[bool]:
    """A filter on the token usage or cost: ``=`` / ``!=`` with the JSON MLflow reads
    back (anything else equals nothing), as MLflow's search compares them."""
    names = _JSON_COLUMNS[clause.key]
    if clause.comparator not in (f.EQ, f.NE):
        raise InvalidParameter(
            f"metadata.{clause.key} takes = and != only (compared with the JSON that reads back), "
            f"not {clause.comparator}"
        )
    columns = {name: trace_info.c[name] for name in names}
    present = or_(*(c.isnot(None) for c in columns.values()))
    try:
        wanted = _json_columns(clause.key, str(clause.value), names)
    except InvalidParameter:
        wanted = {}
    if wanted and json.dumps({n: wanted[n] for n in names if n in wanted}) == clause.value:
        matches: ColumnElement[bool] = and_(
            *(columns[n] == wanted[n] if n in wanted else columns[n].is_(None) for n in names)
        )
    else:
        matches = false()
    return matches if clause.comparator == f.EQ else and_(present, ~matches)
