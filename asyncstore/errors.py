"""The exception tree of asyncstore.

Every error a caller sees is a :class:`StoreError` with a stable ``code`` (one of
:class:`ErrorCode`) and an ``http_status`` a web app can return as it is. Driver
exceptions are translated once, in :mod:`asyncstore.uow`, and chained with
``from exc``; they never reach a caller bare.
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """Stable, machine-readable error codes (MLflow's names for the same cases)."""

    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    INVALID_PARAMETER = "INVALID_PARAMETER"
    INVALID_STATE = "INVALID_STATE"
    TEMPORARILY_UNAVAILABLE = "TEMPORARILY_UNAVAILABLE"
    SCHEMA_OUT_OF_DATE = "SCHEMA_OUT_OF_DATE"
    INTERNAL = "INTERNAL"


class StoreError(Exception):
    """Base class of every error raised by asyncstore.

    Attributes:
        code: the stable :class:`ErrorCode` of this kind of error.
        http_status: the HTTP status a web app should answer with.
    """

    code: ErrorCode = ErrorCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.value}, message={self.message!r})"


class NotFound(StoreError):
    """The experiment, run, trace, job… asked for does not exist."""

    code = ErrorCode.NOT_FOUND
    http_status = 404


class AlreadyExists(StoreError):
    """A row with the same unique key exists already."""

    code = ErrorCode.ALREADY_EXISTS
    http_status = 409


class InvalidParameter(StoreError):
    """The caller's input is malformed or out of range; nothing was written."""

    code = ErrorCode.INVALID_PARAMETER
    http_status = 400


class InvalidState(StoreError):
    """The operation is not allowed in the entity's current state (a deleted run…)."""

    code = ErrorCode.INVALID_STATE
    http_status = 409


class TemporarilyUnavailable(StoreError):
    """A transient failure (deadlock, lost connection, pool exhausted); try again later."""

    code = ErrorCode.TEMPORARILY_UNAVAILABLE
    http_status = 503


class SchemaOutOfDate(StoreError):
    """The database schema is not at the revision this version of asyncstore needs."""

    code = ErrorCode.SCHEMA_OUT_OF_DATE
    http_status = 503


class InternalError(StoreError):
    """An unexpected failure: a bug, or a database in a state asyncstore cannot handle."""

    code = ErrorCode.INTERNAL
    http_status = 500


class ConfigurationError(InvalidParameter):
    """The configuration (URI, pool option, environment variable) is invalid.

    It is an :class:`InvalidParameter`: the value given is wrong, and the message
    names it and says what is allowed.
    """


class DatabaseConnectError(StoreError):
    """The database refused us for good: wrong credentials or an unknown database.

    Not retried, since trying again cannot help.
    """

    code = ErrorCode.INTERNAL
    http_status = 500


__all__ = [
    "AlreadyExists",
    "ConfigurationError",
    "DatabaseConnectError",
    "ErrorCode",
    "InternalError",
    "InvalidParameter",
    "InvalidState",
    "NotFound",
    "SchemaOutOfDate",
    "StoreError",
    "TemporarilyUnavailable",
]
