"""Configuration: URI normalisation, pool options and ``ASYNCSTORE_*`` variables.

Precedence is keyword argument, then environment variable, then default. The
environment is read only when :meth:`StoreConfig.load` is called, never at
import time. Every bad value is a :class:`~asyncstore.errors.ConfigurationError`
that names the keyword or variable, the value given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from asyncstore.errors import ConfigurationError

T = TypeVar("T")

DEFAULT_URI = "sqlite:///asyncstore.db"
ENV_PREFIX = "ASYNCSTORE_"


class Backend(str, enum.Enum):
    """The database families asyncstore runs on."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"
    MYSQL = "mysql"


# Scheme (the part of the URI before "://", driver included) -> async scheme.
_SCHEMES: dict[str, str] = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mysql+mysqldb": "mysql+aiomysql",
    "mysql+aiomysql": "mysql+aiomysql",
    "mariadb": "mariadb+aiomysql",
    "mariadb+pymysql": "mariadb+aiomysql",
    "mariadb+aiomysql": "mariadb+aiomysql",
}

# Pool classes that SQLAlchemy accepts for an asyncio engine.
POOL_CLASSES = ("AsyncAdaptedQueuePool", "NullPool", "StaticPool", "AssertionPool")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def backend_of(uri: str | URL) -> Backend:
    """Return the :class:`Backend` of a (normalised or plain) database URI."""
    name = make_url(uri).get_backend_name() if isinstance(uri, str) else uri.get_backend_name()
    if name == "sqlite":
        return Backend.SQLITE
    if name in ("postgresql", "postgres"):
        return Backend.POSTGRESQL
    if name in ("mysql", "mariadb"):
        return Backend.MYSQL
    raise ConfigurationError(_unsupported_scheme(name))


def _unsupported_scheme(scheme: str) -> str:
    supported = ", ".join(sorted({s.split("+")[0] + "://" for s in _SCHEMES}))
    return (
        f"database URI scheme {scheme!r} is not supported; use one of {supported} "
        "(for example sqlite:///asyncstore.db, postgresql://user@host/db, mysql://user@host/db)"
    )


def normalize_uri(uri: str | URL) -> URL:
    """Map a database URI to its async driver and return it as a SQLAlchemy ``URL``.

    ``sqlite://``, ``postgresql://``, ``postgres://``, ``mysql://``, ``mysql+pymysql://``
    and ``mariadb://`` become ``sqlite+aiosqlite``, ``postgresql+asyncpg`` and
    ``mysql+aiomysql``; an already-async URI is kept. MySQL connections default to the
    ``utf8mb4`` character set so that 4-byte UTF-8 (emoji) round-trips.

    Raises:
        ConfigurationError: the URI cannot be parsed or its scheme is not supported.
    """
    try:
        url = make_url(uri) if isinstance(uri, str) else uri
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is not a number
        raise ConfigurationError(
            f"could not parse database URI {redact(str(uri))!r}; expected a URI such as "
            "sqlite:///asyncstore.db or postgresql://user@host:5432/db"
        ) from exc
    scheme = url.drivername.lower()
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ConfigurationError(_unsupported_scheme(scheme))
    url = url.set(drivername=target)
    if target.endswith("+aiomysql") and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


def redact(uri: str | URL) -> str:
    """Return the URI with its password replaced by ``***`` (safe for logs and errors)."""
    try:
        url = make_url(uri) if isinstance(uri, str) else uri
    except (ArgumentError, ValueError):
        return "<unparseable URI>"
    return url.render_as_string(hide_password=True)


def is_sqlite_memory(url: URL) -> bool:
    """Whether a SQLite URL names an in-memory database."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Validated settings of one database connection pool.

    Build it with :meth:`load`, which applies keyword > environment > default.
    The instance is hashable: it is the engine cache key (with the event loop).
    """

    uri: str
    """Normalised async URI (password included: never log it, use :attr:`safe_uri`)."""
    pool_size: int = 10
    """Connections kept open in the pool (ignored by NullPool and StaticPool)."""
    max_overflow: int = 10
    """Extra connections allowed beyond pool_size under load."""
    pool_timeout: float = 30.0
    """Seconds a caller waits for a free connection before TEMPORARILY_UNAVAILABLE."""
    pool_recycle: int = -1
    """Seconds after which a connection is replaced; -1 never. MySQL defaults to 3600,
    below the server's 8-hour wait_timeout, so the server never drops one under us."""
    pool_pre_ping: bool = True
    """Test a connection on checkout (one round trip) so one the server dropped is
    replaced, not used. On by default for MySQL, whose servers drop idle connections
    after wait_timeout. Off for PostgreSQL: a transaction that meets a dead pooled
    connection fails before COMMIT, and the unit of work runs it again on a fresh one
    (SQLAlchemy then recycles the whole stale pool), so the extra round trip on every
    transaction buys nothing. Off for SQLite, which has no server."""
    echo: bool = False
    """Log every SQL statement (SQLAlchemy's echo)."""
    poolclass: str | None = None
    """Name of a SQLAlchemy pool class; None picks the default for the backend."""
    connect_retries: int = 5
    """How many times a failed connection attempt is retried (server still starting)."""
    connect_backoff: float = 0.2
    """First wait in seconds between connection attempts; doubles each time, capped at 5 s."""
    transaction_retries: int = 3
    """How many times a transaction that failed transiently is retried where safe."""
    sqlite_busy_timeout_ms: int = 30_000
    """How long SQLite waits for a lock held by another process before giving up."""
    mysql_ssl_ca: str | None = None
    mysql_ssl_cert: str | None = None
    mysql_ssl_key: str | None = None

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{f.name}={self.safe_uri if f.name == 'uri' else getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
        )
        return f"StoreConfig({fields})"

    @property
    def url(self) -> URL:
        """The normalised URI as a SQLAlchemy ``URL``."""
        return make_url(self.uri)

    @property
    def safe_uri(self) -> str:
        """The URI with its password hidden."""
        return redact(self.uri)

    @property
    def backend(self) -> Backend:
        """The backend this configuration connects to."""
        return backend_of(self.url)

    @classmethod
    def load(
        cls,
        uri: str | URL | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> StoreConfig:
        """Build a configuration from keywords, then ``ASYNCSTORE_*`` variables, then defaults.

        Args:
            uri: the database URI; falls back to ``ASYNCSTORE_DATABASE_URI``, then
                ``sqlite:///asyncstore.db``.
            environ: the environment to read (``os.environ`` when None).
            **options: any field of :class:`StoreConfig` except ``uri``.

        Raises:
            ConfigurationError: an unknown option, or a value of the wrong type or range.
        """
        env = os.environ if environ is None else environ
        unknown = set(options) - {f.name for f in dataclasses.fields(cls)} - {"uri"}
        if unknown:
            allowed = ", ".join(f.name for f in dataclasses.fields(cls) if f.name != "uri")
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(unknown))}; allowed: {allowed}"
            )
        raw_uri: str | URL = uri if uri is not None else env.get(
            ENV_PREFIX + "DATABASE_URI", DEFAULT_URI
        )
        url = normalize_uri(raw_uri)
        backend = backend_of(url)

        def pick(name: str, parse: Callable[[str, Any], T], default: T) -> T:
            if options.get(name) is not None:
                return parse(f"keyword {name}", options[name])
            var = ENV_PREFIX + name.upper()
            if env.get(var, "") != "":
                return parse(f"{var}", env[var])
            return default

        memory = is_sqlite_memory(url)
        poolclass = pick("poolclass", _pool_class, None)
        if memory and poolclass not in (None, "StaticPool"):
            raise ConfigurationError(
                f"poolclass {poolclass!r} cannot serve an in-memory SQLite database "
                "(each connection would see an empty database); use StaticPool or a file URI"
            )
        config = cls(
            uri=url.render_as_string(hide_password=False),
            pool_size=pick("pool_size", _int(minimum=0), 10),
            max_overflow=pick("max_overflow", _int(minimum=-1), 10),
            pool_timeout=pick("pool_timeout", _float(minimum=0.0), 30.0),
            pool_recycle=pick("pool_recycle", _int(minimum=-1), 3600 if backend is Backend.MYSQL else -1),
            pool_pre_ping=pick("pool_pre_ping", _bool, backend is Backend.MYSQL),
            echo=pick("echo", _bool, False),
            poolclass="StaticPool" if memory else poolclass,
            connect_retries=pick("connect_retries", _int(minimum=0), 5),
            connect_backoff=pick("connect_backoff", _float(minimum=0.0), 0.2),
            transaction_retries=pick("transaction_retries", _int(minimum=0), 3),
            sqlite_busy_timeout_ms=pick("sqlite_busy_timeout_ms", _int(minimum=0), 30_000),
            mysql_ssl_ca=pick("mysql_ssl_ca", _path, None),
            mysql_ssl_cert=pick("mysql_ssl_cert", _path, None),
            mysql_ssl_key=pick("mysql_ssl_key", _path, None),
        )
        if config.pool_size == 0 and config.poolclass in (None, "AsyncAdaptedQueuePool"):
            raise ConfigurationError(
                "pool_size 0 would let the pool grow without limit; give a size >= 1, "
                "or poolclass NullPool to open a connection per use"
            )
        return config


def _bad(label: str, value: Any, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"{label}={value!r} is not valid: {allowed}")


def _int(*, minimum: int) -> Callable[[str, Any], int]:
    def parse(label: str, value: Any) -> int:
        if isinstance(value, bool):
            raise _bad(label, value, f"expected a whole number >= {minimum}")
        try:
            number = int(value) if isinstance(value, (int, str)) else None
        except ValueError:
            number = None
        if number is None or number < minimum:
            raise _bad(label, value, f"expected a whole number >= {minimum}")
        return number

    return parse


def _float(*, minimum: float) -> Callable[[str, Any], float]:
    def parse(label: str, value: Any) -> float:
        if isinstance(value, bool):
            raise _bad(label, value, f"expected a number of seconds >= {minimum}")
        try:
            number = float(value) if isinstance(value, (int, float, str)) else None
        except ValueError:
            number = None
        if number is None or not number >= minimum or number == float("inf"):
            raise _bad(label, value, f"expected a finite number >= {minimum}")
        return number

    return parse


def _bool(label: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(label, value, "expected one of true/false, 1/0, yes/no, on/off")


def _pool_class(label: str, value: Any) -> str:
    name = value if isinstance(value, str) else getattr(value, "__name__", None)
    if name not in POOL_CLASSES:
        raise _bad(label, value, f"expected one of {', '.join(POOL_CLASSES)}")
    return str(name)


def _path(label: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise _bad(label, value, "expected a file path")
    path = os.fspath(value)
    if not os.path.isfile(path):
        raise _bad(label, value, "expected the path of an existing, readable file")
    return str(path)
