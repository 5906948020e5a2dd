"""SQL that differs per dialect, in one place.

The backend's INSERT with its upsert clause, a LIKE, a regular expression match and
text comparisons that are case-sensitive on every backend, code-point ordering of
strings, and the chunking of long ``IN`` lists.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, String, Table, and_, cast, func, literal, or_, type_coerce
from sqlalchemy.dialects import mysql as mysql_dialect
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Insert
from typing_extensions import assert_never

from asyncstore.config import Backend

T = TypeVar("T")

IN_CHUNK = 1000
"""Run ids per ``IN (...)`` list when loading the data of a page of runs: far below
SQLite's 32766 bound-parameter limit, and large enough to keep round trips few."""

def dialect_insert(backend: Backend, table: Table) -> Insert:
    """An INSERT of the backend's dialect (so it has upsert methods)."""
    if backend is Backend.SQLITE:
        return sqlite_dialect.insert(table)
    if backend is Backend.POSTGRESQL:
        return pg_dialect.insert(table)
    if backend is Backend.MYSQL:
        return mysql_dialect.insert(table)
    assert_never(backend)


def upsert(
    backend: Backend,
    table: Table,
    keys: Sequence[str],
    update: Sequence[str],
    *,
    merge: Callable[[Any], Mapping[str, Any]] | None = None,
) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO UPDATE / ON DUPLICATE KEY UPDATE ``update``.

    With ``update`` empty, a conflicting row is left as it is (DO NOTHING).
    Execute it with a list of parameter dicts (executemany: one statement per batch).
    Without ``merge`` the statement is built once per arguments and shared (statements
    are immutable; building one costs more than a small write): a caller that passes
    ``merge`` caches its own.

    Args:
        backend: the backend whose dialect renders the statement.
        table: the table inserted into.
        keys: the columns of the unique key a conflict is detected on.
        update: the columns a conflicting row takes from the inserted one.
        merge: instead of ``update``, builds the SET clause from the inserted row's
            columns (PostgreSQL and SQLite ``excluded``, MySQL ``inserted``); plain
            table columns in it stand for the stored row. On MySQL the assignments
            run in order and see the ones before them.
    """
    if merge is None:
        return _plain_upsert(backend, table, tuple(keys), tuple(update))
    return _build_upsert(backend, table, keys, update, merge)


@functools.cache
def _plain_upsert(backend: Backend, table: Table, keys: tuple[str, ...], update: tuple[str, ...]) -> Insert:
    return _build_upsert(backend, table, keys, update, None)


def _build_upsert(
    backend: Backend, table: Table, keys: Sequence[str], update: Sequence[str],
    merge: Callable[[Any], Mapping[str, Any]] | None,
) -> Insert:
    stmt: Any = dialect_insert(backend, table)
    new = stmt.inserted if backend is Backend.MYSQL else stmt.excluded
    values = dict(merge(new)) if merge is not None else {c: new[c] for c in update}
    if backend is Backend.MYSQL:
        # MySQL has no DO NOTHING: assigning a key column to itself is a no-op update.
        return stmt.on_duplicate_key_update(values or {keys[0]: new[keys[0]]})  # type: ignore[no-any-return]
    if not values:
        return stmt.on_conflict_do_nothing(index_elements=list(keys))  # type: ignore[no-any-return]
    return stmt.on_conflict_do_update(index_elements=list(keys), set_=values)  # type: ignore[no-any-return]


def _like_to_glob(pattern: str) -> str:
    """Translate a LIKE pattern (% _ and backslash escapes) into an equivalent GLOB."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            i += 1
            ch = pattern[i]
            out.append(f"[{ch}]" if ch in "*?[" else ch)
        elif ch == "%":
            out.append("*")
        elif ch == "_":
            out.append("?")
        elif ch in "*?[":
            out.append(f"[{ch}]")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def like(backend: Backend, column: ColumnElement[Any], pattern: str, *, insensitive: bool) -> ColumnElement[bool]:
    """A LIKE (case-sensitive) or ILIKE comparison that behaves the same on every backend.

    ``%`` and ``_`` are wildcards and a backslash escapes the next character. SQLite's
    LIKE ignores case, so there it becomes the equivalent GLOB.
    """
    if backend is Backend.SQLITE:
        if insensitive:
            return func.lower(column).op("GLOB")(_like_to_glob(pattern.lower()))
        return column.op("GLOB")(_like_to_glob(pattern))
    if backend is Backend.POSTGRESQL:
        return column.ilike(pattern) if insensitive else column.like(pattern)
    if backend is Backend.MYSQL:
        if insensitive:
            return func.lower(column).like(func.lower(pattern))
        return case_sensitive(backend, column, lambda c: c.like(pattern), negated=False)
    assert_never(backend)


def regexp(backend: Backend, column: ColumnElement[Any], pattern: str) -> ColumnElement[bool]:
    """``column`` matches the regular expression ``pattern`` somewhere, case-sensitively,
    as MLflow's RLIKE: SQLite's REGEXP (Python's ``re.search``, registered on every
    connection by :mod:`asyncstore.engines`), PostgreSQL's ``~``, and on MySQL REGEXP
    on the bytes (an MLflow database's collation ignores case)."""
    if backend is Backend.SQLITE:
        return column.op("REGEXP")(pattern)
    if backend is Backend.POSTGRESQL:
        return column.op("~")(pattern)
    if backend is Backend.MYSQL:
        binary = mysql_dialect.BINARY()
        return cast(column, binary).op("REGEXP")(cast(literal(pattern, String()), binary))
    assert_never(backend)


def sqlite_regexp(pattern: str | None, text: str | None) -> bool:
    """SQLite's ``REGEXP`` function, as MLflow registers it: Python's ``re.search``;
    NULL, or a pattern that does not compile, matches nothing."""
    if pattern is None or text is None:
        return False
    try:
        return re.search(pattern, text) is not None
    except re.error:
        return False


def case_sensitive(
    backend: Backend,
    column: ColumnElement[Any],
    condition: Callable[[ColumnElement[Any]], ColumnElement[bool]],
    *,
    negated: bool,
) -> ColumnElement[bool]:
    """``condition(column)`` on a text column, comparing case and trailing spaces.

    asyncstore's own MySQL tables have a binary collation, but an MLflow database's
    use the server's default, which ignores case. There the condition is also taken on
    the column's bytes, as MLflow's search does (the plain one keeps indexes usable):
    both must hold, or for a negated condition (``!=``, ``NOT IN``) either.
    """
    plain = condition(column)
    if backend is not Backend.MYSQL:
        return plain
    # Typed as text again so that the compared values bind as strings.
    raw = condition(type_coerce(cast(column, mysql_dialect.BINARY()), String()))
    return or_(plain, raw) if negated else and_(plain, raw)


def sortable(backend: Backend, column: ColumnElement[Any]) -> ColumnElement[Any]:
    """A string column ordered by code point on every backend (PostgreSQL: "C" collation)."""
    if backend is Backend.POSTGRESQL:
        return column.collate("C")
    if backend in (Backend.SQLITE, Backend.MYSQL):
        return column  # BINARY / utf8mb4_bin already compare code points
    assert_never(backend)


def chunks(items: Sequence[T], size: int = IN_CHUNK) -> Iterable[Sequence[T]]:
    """Split ``items`` into slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def galera_node(conn: AsyncConnection) -> tuple[int, int] | None:
    """For a node of a MariaDB Galera cluster (``wsrep_on``): its index in the cluster and
    the cluster's size (``wsrep_local_index``, ``wsrep_cluster_size``); else None. Commits
    the transaction its statements began."""
    on = (await conn.exec_driver_sql("SHOW VARIABLES LIKE 'wsrep_on'")).mappings().first()
    if on is None or str(on["Value"]).upper() != "ON":
        await conn.commit()
        return None
    status = {
        str(row["Variable_name"]).lower(): row["Value"]
        for row in (
            await conn.exec_driver_sql(
                "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_index', 'wsrep_cluster_size')"
            )
        ).mappings()
    }
    await conn.commit()
    return int(status.get("wsrep_local_index") or 0), max(1, int(status.get("wsrep_cluster_size") or 1))
