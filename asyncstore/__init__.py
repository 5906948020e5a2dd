"""asyncstore: an async-first store for experiments, runs, traces, spans and jobs.

Only public names live here; see the README for the tour.
"""

from asyncstore.config import Backend, StoreConfig, normalize_uri
from asyncstore.engines import dispose_engines, get_engine
from asyncstore.entities import *  # noqa: F403
from asyncstore.entities import __all__ as _entity_names
from asyncstore.errors import (
    AlreadyExists,
    ConfigurationError,
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
from asyncstore.store import AsyncStore

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AsyncStore",
    "Backend",
    "ConfigurationError",
    "DatabaseConnectError",
    "ErrorCode",
    "InternalError",
    "InvalidParameter",
    "InvalidState",
    "NotFound",
    "SchemaOutOfDate",
    "StoreConfig",
    "StoreError",
    "TemporarilyUnavailable",
    "dispose_engines",
    "get_engine",
    "normalize_uri",
    *_entity_names,
]
