"""Classification of driver exceptions into asyncstore errors.

Classification reads structured codes only: PostgreSQL SQLSTATE (asyncpg), MySQL
error numbers (aiomysql / PyMySQL) and SQLite extended result codes (sqlite3), never
message text. :mod:`asyncstore.uow` calls :func:`translate` at its one translation
boundary; :mod:`asyncstore.engines` asks :func:`connect_failure_is_transient`
whether a failed connection attempt is worth another try.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Iterator, Mapping

import sqlalchemy.exc as sa_exc
from asyncpg.exceptions import InterfaceError as _PgInterfaceError
from asyncpg.exceptions import InternalClientError as _PgInternalClientError
from pymysql.err import InterfaceError as _MySQLInterfaceError
from pymysql.err import MySQLError as _MySQLError

from asyncstore.errors import (
    AlreadyExists,
    DatabaseConnectError,
    ErrorCode,
    InternalError,
    InvalidParameter,
    InvalidState,
    NotFound,
    SchemaOutOfDate,
    StoreError,
    TemporarilyUnavailable,
)

# --- PostgreSQL SQLSTATE -----------------------------------------------------------
_PG_EXACT: dict[str, type[StoreError]] = {
    "23505": AlreadyExists,  # unique_violation
    "23503": NotFound,  # foreign_key_violation: the referenced row is missing
    "23502": InvalidParameter,  # not_null_violation
    "23514": InvalidParameter,  # check_violation
    "40001": TemporarilyUnavailable,  # serialization_failure
    "40P01": TemporarilyUnavailable,  # deadlock_detected
    "55P03": TemporarilyUnavailable,  # lock_not_available
    "57014": TemporarilyUnavailable,  # query_canceled (statement_timeout)
    "57P01": TemporarilyUnavailable,  # admin_shutdown (pg_terminate_backend)
    "57P02": TemporarilyUnavailable,  # crash_shutdown
    "57P03": TemporarilyUnavailable,  # cannot_connect_now (server starting)
    "28000": DatabaseConnectError,  # invalid_authorization_specification
    "28P01": DatabaseConnectError,  # invalid_password
    "3D000": DatabaseConnectError,  # invalid_catalog_name (unknown database)
    "42P01": SchemaOutOfDate,  # undefined_table
    "42703": SchemaOutOfDate,  # undefined_column
}
_PG_CLASS: dict[str, type[StoreError]] = {
    "08": TemporarilyUnavailable,  # connection exception
    "22": InvalidParameter,  # data exception (value too long, out of range…)
    "53": TemporarilyUnavailable,  # insufficient resources (too many connections)
}
# Retrying these cannot help the caller now (the pool or server is full, not racing).
_PG_NOT_RETRYABLE = frozenset({"53300", "57P03"})
# The transaction was rolled back whole (Classified.rolled_back).
_PG_ROLLED_BACK = frozenset({"40001", "40P01"})

# --- MySQL / MariaDB error numbers --------------------------------------------------
_MYSQL: dict[int, type[StoreError]] = {
    1062: AlreadyExists,  # ER_DUP_ENTRY
    1586: AlreadyExists,  # ER_DUP_ENTRY_WITH_KEY_NAME
    1452: NotFound,  # ER_NO_REFERENCED_ROW_2
    1216: NotFound,  # ER_NO_REFERENCED_ROW
    1451: InvalidState,  # ER_ROW_IS_REFERENCED_2
    1217: InvalidState,  # ER_ROW_IS_REFERENCED
    1048: InvalidParameter,  # ER_BAD_NULL_ERROR
    1364: InvalidParameter,  # ER_NO_DEFAULT_FOR_FIELD
    1366: InvalidParameter,  # ER_TRUNCATED_WRONG_VALUE_FOR_FIELD
    1406: InvalidParameter,  # ER_DATA_TOO_LONG
    1264: InvalidParameter,  # ER_WARN_DATA_OUT_OF_RANGE
    1265: InvalidParameter,  # WARN_DATA_TRUNCATED
    1292: InvalidParameter,  # ER_TRUNCATED_WRONG_VALUE
    1367: InvalidParameter,  # ER_ILLEGAL_VALUE_FOR_TYPE
    3819: InvalidParameter,  # ER_CHECK_CONSTRAINT_VIOLATED (MySQL)
    4025: InvalidParameter,  # ER_CONSTRAINT_FAILED (MariaDB)
    1139: InvalidParameter,  # ER_REGEXP_ERROR (MariaDB: a pattern its PCRE2 rejects)
    **dict.fromkeys(range(3685, 3698), InvalidParameter),  # ER_REGEXP_* (MySQL 8: a bad pattern)
    1205: TemporarilyUnavailable,  # ER_LOCK_WAIT_TIMEOUT
    1213: TemporarilyUnavailable,  # ER_LOCK_DEADLOCK
    1040: TemporarilyUnavailable,  # ER_CON_COUNT_ERROR (too many connections)
    1053: TemporarilyUnavailable,  # ER_SERVER_SHUTDOWN
    1317: TemporarilyUnavailable,  # ER_QUERY_INTERRUPTED
    1927: TemporarilyUnavailable,  # ER_CONNECTION_KILLED (MariaDB)
    2002: TemporarilyUnavailable,  # CR_CONNECTION_ERROR
    2003: TemporarilyUnavailable,  # CR_CONN_HOST_ERROR
    2006: TemporarilyUnavailable,  # CR_SERVER_GONE_ERROR
    2013: TemporarilyUnavailable,  # CR_SERVER_LOST
    2055: TemporarilyUnavailable,  # CR_SERVER_LOST_EXTENDED
    1044: DatabaseConnectError,  # ER_DBACCESS_DENIED_ERROR
    1045: DatabaseConnectError,  # ER_ACCESS_DENIED_ERROR
    1049: DatabaseConnectError,  # ER_BAD_DB_ERROR
    1698: DatabaseConnectError,  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1146: SchemaOutOfDate,  # ER_NO_SUCH_TABLE
    1054: SchemaOutOfDate,  # ER_BAD_FIELD_ERROR
}
_MYSQL_NOT_RETRYABLE = frozenset({1040})
# The transaction was rolled back whole (Classified.rolled_back): a deadlock victim, or a
# Galera certification failure, which MariaDB reports as a deadlock, at COMMIT too.
_MYSQL_ROLLED_BACK = frozenset({1213})

# --- SQLite extended result codes ---------------------------------------------------
_SQLITE_EXTENDED: dict[int, type[StoreError]] = {
    2067: AlreadyExists,  # SQLITE_CONSTRAINT_UNIQUE
    1555: AlreadyExists,  # SQLITE_CONSTRAINT_PRIMARYKEY
    787: NotFound,  # SQLITE_CONSTRAINT_FOREIGNKEY
    1299: InvalidParameter,  # SQLITE_CONSTRAINT_NOTNULL
    275: InvalidParameter,  # SQLITE_CONSTRAINT_CHECK
}
_SQLITE_PRIMARY: dict[int, type[StoreError]] = {
    5: TemporarilyUnavailable,  # SQLITE_BUSY
    6: TemporarilyUnavailable,  # SQLITE_LOCKED
    18: InvalidParameter,  # SQLITE_TOOBIG
    19: InvalidParameter,  # SQLITE_CONSTRAINT (other kinds)
    20: InvalidParameter,  # SQLITE_MISMATCH
    25: InvalidParameter,  # SQLITE_RANGE
    14: DatabaseConnectError,  # SQLITE_CANTOPEN
}

_DEFAULT_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.ALREADY_EXISTS: "a row with the same key exists already",
    ErrorCode.NOT_FOUND: "a referenced row does not exist",
    ErrorCode.INVALID_PARAMETER: "the database rejected a value (too long, out of range or missing)",
    ErrorCode.INVALID_STATE: "the row is still referenced by other rows",
    ErrorCode.TEMPORARILY_UNAVAILABLE: "the database is temporarily unavailable; try again",
    ErrorCode.SCHEMA_OUT_OF_DATE: (
        "the database schema is not the one this asyncstore expects; run `asyncstore db upgrade`"
    ),
    ErrorCode.INTERNAL: "unexpected database error",
}
_CONNECT_REFUSED = (
    "the database refused the connection; check the user, password and database name in the URI"
)


@dataclasses.dataclass(frozen=True)
class Classified:
    """What asyncstore makes of a driver exception."""

    kind: type[StoreError]
    retryable: bool
    """True for a race that a fresh transaction can win (deadlock, lost connection)."""
    detail: str
    rolled_back: bool = False
    """The server says it rolled the whole transaction back (a deadlock, a serialization
    failure, a Galera certification failure, which MariaDB reports as a deadlock): even
    when this answered the COMMIT, nothing of the transaction took effect."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the DBAPI error it wraps and their causes, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                stack.append(nxt)


def classify(exc: BaseException) -> Classified | None:
    """Classify a driver or SQLAlchemy exception, or return None if it is not one."""
    for err in _chain(exc):
        # MySQL first: PyMySQL >= 1.1 also sets a (MySQL-flavoured) sqlstate attribute,
        # but its error number is the precise code.
        if isinstance(err, _MySQLError) and err.args and isinstance(err.args[0], int):
            errno = err.args[0]
            if isinstance(err, _MySQLInterfaceError) and errno == 0:
                # PyMySQL's "connection already closed": the connection died under us.
                return Classified(TemporarilyUnavailable, True, "MySQL connection closed")
            kind = _MYSQL.get(errno, InternalError)
            retry = kind is TemporarilyUnavailable and errno not in _MYSQL_NOT_RETRYABLE
            return Classified(kind, retry, f"MySQL error {errno}: {_first_line(err)}", errno in _MYSQL_ROLLED_BACK)
        sqlstate = getattr(err, "sqlstate", None)
        if isinstance(sqlstate, str) and len(sqlstate) == 5:
            kind = _PG_EXACT.get(sqlstate) or _PG_CLASS.get(sqlstate[:2]) or InternalError
            retry = kind is TemporarilyUnavailable and sqlstate not in _PG_NOT_RETRYABLE
            return Classified(kind, retry, f"SQLSTATE {sqlstate}: {_first_line(err)}", sqlstate in _PG_ROLLED_BACK)
        if isinstance(err, sqlite3.Error):
            code = getattr(err, "sqlite_errorcode", None)
            if code is None:  # Python 3.10: no result codes, fall back to the class
                kind = InvalidParameter if isinstance(err, sqlite3.IntegrityError) else InternalError
            else:
                kind = _SQLITE_EXTENDED.get(code) or _SQLITE_PRIMARY.get(code & 0xFF) or InternalError
            retry = kind is TemporarilyUnavailable
            name = getattr(err, "sqlite_errorname", "SQLITE_ERROR")
            return Classified(kind, retry, f"{name}: {_first_line(err)}")
        if isinstance(err, _PgInternalClientError):
            # "cannot switch to state …; another operation is in progress": the session was
            # killed in the middle of an exchange and the connection's protocol state is
            # broken. A fresh connection is fine (the unit of work discards this one).
            return Classified(TemporarilyUnavailable, True, f"connection left in a broken state: {_first_line(err)}")
        if isinstance(err, _PgInterfaceError):
            # asyncpg's ConnectionDoesNotExistError and friends: the connection is gone.
            return Classified(TemporarilyUnavailable, True, f"connection lost: {_first_line(err)}")
        if isinstance(err, sa_exc.TimeoutError):
            return Classified(
                TemporarilyUnavailable,
                False,
                "no database connection became free within pool_timeout; "
                "raise pool_size/max_overflow or pool_timeout, or send fewer concurrent calls",
            )
        if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
            return Classified(TemporarilyUnavailable, True, "the database connection was lost")
        if isinstance(err, (OSError, asyncio.TimeoutError, ConnectionError)):
            return Classified(TemporarilyUnavailable, True, f"cannot reach the database: {_first_line(err)}")
    return None


def connect_failure_is_transient(exc: BaseException) -> bool:
    """Whether a failed connection attempt may succeed if tried again (server starting…).

    Wrong credentials and unknown databases are permanent: trying again cannot help.
    """
    found = classify(exc)
    if found is None:
        return False
    return found.kind is TemporarilyUnavailable


_CONNECT_FAILURE = "asyncstore_connect_failure"


def mark_connect_failure(exc: BaseException) -> None:
    """Mark ``exc`` as the end of the engine's own connect retries (see :func:`is_connect_failure`)."""
    setattr(exc, _CONNECT_FAILURE, True)


def is_connect_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) ended the engine's connect retries.

    Such a failure was already retried with backoff while connecting; a connection
    that was made and then died while SQLAlchemy set it up was not.
    """
    return any(getattr(err, _CONNECT_FAILURE, False) for err in _chain(exc))


def leaves_connection_broken(exc: BaseException) -> bool:
    """Whether ``exc`` says the driver connection's protocol state is broken (asyncpg's
    InternalClientError): it must be discarded, not rolled back and pooled again."""
    return any(isinstance(err, _PgInternalClientError) for err in _chain(exc))


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the database layer (driver or SQLAlchemy) and so is translated.

    Anything else raised inside a transaction (a ``KeyError`` in the caller's code, a
    ``StoreError`` raised on purpose) rolls the transaction back and propagates unchanged.
    """
    return isinstance(exc, sa_exc.SQLAlchemyError) or classify(exc) is not None


def translate(exc: BaseException, messages: Mapping[ErrorCode, str] | None = None) -> StoreError:
    """Turn a driver or SQLAlchemy exception into the matching :class:`StoreError`.

    Args:
        exc: the exception caught at the unit-of-work boundary.
        messages: what the calling operation wants to say for a given code, e.g.
            ``{ErrorCode.ALREADY_EXISTS: "experiment 'x' exists already"}``.
    """
    if isinstance(exc, StoreError):
        return exc
    found = classify(exc)
    if found is None:
        kind: type[StoreError] = InternalError
        detail = f"{type(exc).__name__}: {_first_line(exc)}"
    else:
        kind, detail = found.kind, found.detail
    if kind is DatabaseConnectError:
        base = _CONNECT_REFUSED
    else:
        base = (messages or {}).get(kind.code) or _DEFAULT_MESSAGES[kind.code]
    return kind(f"{base} ({detail})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."
