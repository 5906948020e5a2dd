"""SQL conditions every search shares: a comparator on a column, and the lifecycle view.

:mod:`asyncstore.filters` parses a filter string into clauses with canonical
comparators; :func:`compare` turns one comparator and its value into a SQLAlchemy
condition with the value bound, the same way for experiments, runs and traces
(``LIKE`` / ``ILIKE`` through :func:`asyncstore.dialect.like` and ``RLIKE`` through
:func:`asyncstore.dialect.regexp`, so they behave the same on every backend).
:func:`view_condition` is the ``lifecycle_stage`` filter of a
:class:`~asyncstore.entities.ViewType`, shared by experiment and run search.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import ColumnElement

from asyncstore import filters as f
from asyncstore.config import Backend
from asyncstore.dialect import case_sensitive, like, regexp
from asyncstore.entities import LifecycleStage, ViewType
from asyncstore.errors import InvalidParameter

_OPERATORS: Mapping[str, Callable[[Any, Any], Any]] = {
    f.EQ: operator.eq, f.NE: operator.ne, f.GT: operator.gt, f.GE: operator.ge, f.LT: operator.lt, f.LE: operator.le,
}

_VIEW_STAGES: Mapping[ViewType, LifecycleStage | None] = {
    ViewType.ACTIVE_ONLY: LifecycleStage.ACTIVE,
    ViewType.DELETED_ONLY: LifecycleStage.DELETED,
    ViewType.ALL: None,
}


def compare(backend: Backend, column: ColumnElement[Any], comparator: str, value: Any) -> ColumnElement[bool]:
    """``column <comparator> value`` with ``value`` bound.

    Args:
        backend: the backend the condition runs on (LIKE differs per backend).
        column: the column (or expression) compared.
        comparator: a canonical comparator of :mod:`asyncstore.filters` other than
            ``IS NULL`` / ``IS NOT NULL``: = != > >= < <= LIKE ILIKE RLIKE IN NOT IN.
        value: the literal; a sequence of strings for IN / NOT IN; a regular
            expression for RLIKE.

    Raises:
        InvalidParameter: a comparator this function does not know, or an RLIKE
            pattern that is not a valid regular expression.
    """
    if comparator in (f.LIKE, f.ILIKE):
        return like(backend, column, str(value), insensitive=comparator == f.ILIKE)
    if comparator == f.RLIKE:
        try:
            re.compile(str(value))
        except re.error as exc:
            raise InvalidParameter(f"RLIKE pattern {value!r} is not a valid regular expression: {exc}") from None
        return regexp(backend, column, str(value))
    if comparator in (f.IN, f.NOT_IN):
        values = list(value)
        if comparator == f.IN:
            return case_sensitive(backend, column, lambda c: c.in_(values), negated=False)
        return case_sensitive(backend, column, lambda c: c.not_in(values), negated=True)
    op = _OPERATORS.get(comparator)
    if op is None:
        raise InvalidParameter(f"comparator {comparator} is not supported here")
    if isinstance(value, str) and comparator in (f.EQ, f.NE):
        return case_sensitive(backend, column, lambda c: op(c, value), negated=comparator == f.NE)
    return op(column, value)  # type: ignore[no-any-return]


def clause_comparison(backend: Backend, column: ColumnElement[Any], clause: f.Clause) -> ColumnElement[bool]:
    """``column <comparator> value`` for a parsed clause (see :func:`compare`)."""
    return compare(backend, column, clause.comparator, clause.value)


def check_view(view: object) -> ViewType:
    """Validate a :class:`ViewType` (or its name).

    Raises:
        InvalidParameter: anything else.
    """
    try:
        return ViewType(view)
    except ValueError:
        raise InvalidParameter(f"view {view!r} is not valid; use ViewType.ACTIVE_ONLY, DELETED_ONLY or ALL") from None


def view_condition(view: ViewType | str, column: ColumnElement[Any]) -> ColumnElement[bool] | None:
    """The condition on a ``lifecycle_stage`` column for a view (None for ALL).

    Raises:
        InvalidParameter: ``view`` is not a :class:`ViewType` or its name.
    """
    stage = _VIEW_STAGES[check_view(view)]
    return None if stage is None else column == stage.value


__all__ = ["check_view", "clause_comparison", "compare", "view_condition"]
