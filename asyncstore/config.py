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
import re
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, cast

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


_SYNC_DRIVERS = {Backend.SQLITE: "sqlite", Backend.POSTGRESQL: "postgresql+psycopg2", Backend.MYSQL: "mysql+pymysql"}


def sync_url(url: URL) -> URL:
    """``url`` with the synchronous driver of its backend (sqlite3, psycopg2, PyMySQL):
    the form MLflow's own store and ``mlflow`` commands take."""
    return url.set(drivername=_SYNC_DRIVERS[backend_of(url)])


def is_sqlite_memory(url: URL) -> bool:
    """Whether a SQLite URL names an in-memory database."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


@dataclasses.dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting: its keyword, environment variable, parser, default and meaning.

    :data:`SETTINGS` and :data:`JOB_SETTINGS` list every setting once; ``StoreConfig``,
    its :meth:`~StoreConfig.load`, the job queue's retry policy and the README's
    configuration tables all follow them.

    Attributes:
        keyword: the keyword argument (and ``StoreConfig`` field).
        variable: the environment variable.
        parse: checks and converts a keyword or variable value (``parse(label, value)``),
            raising :class:`ConfigurationError` that names the label.
        default: the value when neither keyword nor variable is given.
        per_backend: backends whose default differs from ``default``.
        meaning: one line saying what the setting does.
    """

    keyword: str
    variable: str
    parse: Callable[[str, Any], T]
    default: T
    meaning: str
    per_backend: Mapping[Backend, T] = dataclasses.field(default_factory=dict)

    def default_for(self, backend: Backend) -> T:
        """The default on ``backend``."""
        return self.per_backend.get(backend, self.default)

    def describe_default(self) -> str:
        """The default as the README shows it, e.g. ``"3600 for MySQL, else -1"``."""
        text = _show(self.default)
        for backend, value in self.per_backend.items():
            text = f"{_show(value)} for {_BACKEND_NAMES[backend]}, else {text}"
        return text

    def pick(self, keyword_value: Any, env: Mapping[str, str], backend: Backend | None = None) -> T:
        """Keyword value if given (not None), else the environment variable if set, else default."""
        if keyword_value is not None:
            return self.parse(f"keyword {self.keyword}", keyword_value)
        if env.get(self.variable, "") != "":
            return self.parse(self.variable, env[self.variable])
        return self.default if backend is None else self.default_for(backend)


_BACKEND_NAMES = {Backend.SQLITE: "SQLite", Backend.POSTGRESQL: "PostgreSQL", Backend.MYSQL: "MySQL"}


def _show(value: object) -> str:
    if value is None or value == ():
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _setting(
    keyword: str, parse: Callable[[str, Any], T], default: T, meaning: str, **per_backend: T
) -> Setting[T]:
    return Setting(
        keyword=keyword,
        variable=ENV_PREFIX + keyword.upper(),
        parse=parse,
        default=default,
        meaning=meaning,
        per_backend={Backend(name): value for name, value in per_backend.items()},
    )


@dataclasses.dataclass(frozen=True)
class StoreConfig:
    """Validated settings of one database connection pool.

    Build it with :meth:`load`, which applies keyword > environment > default. Each
    field is a setting of :data:`SETTINGS` (its default and meaning are there); ``uri``
    is the normalised async URI (password included: never log it, use
    :attr:`safe_uri`). The instance is hashable: it is the engine cache key (with the
    event loop).
    """

    uri: str
    pool_size: int
    max_overflow: int
    pool_timeout: float
    pool_recycle: int
    pool_pre_ping: bool
    echo: bool
    poolclass: str | None
    connect_retries: int
    connect_backoff: float
    transaction_retries: int
    sqlite_busy_timeout_ms: int
    sqlite_checkpoint_interval: float
    mysql_ssl_ca: str | None
    mysql_ssl_cert: str | None
    mysql_ssl_key: str | None
    mysql_local_infile: bool
    workspace: str
    replicas: tuple[str, ...]
    replica_max_lag: float
    replica_check_interval: float

    def __repr__(self) -> str:
        shown = {"uri": self.safe_uri, "replicas": tuple(redact(r) for r in self.replicas)}
        fields = ", ".join(f"{f.name}={shown.get(f.name, getattr(self, f.name))!r}" for f in dataclasses.fields(self))
        return f"StoreConfig({fields})"

    def replica(self, uri: str) -> StoreConfig:
        """The configuration of one of :attr:`replicas`: this one's pool and options on its
        URI, without replicas of its own, and no connection retries (a replica that does
        not answer is left for the primary at once, not waited for)."""
        return dataclasses.replace(self, uri=uri, replicas=(), connect_retries=0)

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
            **options: any setting of :data:`SETTINGS` except ``uri``.

        Raises:
            ConfigurationError: an unknown option, or a value of the wrong type or range.
        """
        env = os.environ if environ is None else environ
        unknown = set(options) - set(SETTINGS)
        if unknown:
            allowed = ", ".join(SETTINGS)
            raise ConfigurationError(
                f"unknown option(s) {', '.join(sorted(unknown))}; allowed: {allowed}"
            )
        url = normalize_uri(uri if uri is not None else URI.pick(None, env))
        backend = backend_of(url)
        values = {name: setting.pick(options.get(name), env, backend) for name, setting in SETTINGS.items()}
        if is_sqlite_memory(url):
            if values["poolclass"] not in (None, "StaticPool"):
                raise ConfigurationError(
                    f"poolclass {values['poolclass']!r} cannot serve an in-memory SQLite database "
                    "(each connection would see an empty database); use StaticPool or a file URI"
                )
            values["poolclass"] = "StaticPool"
        if values["replicas"] and backend is Backend.SQLITE:
            raise ConfigurationError(
                "read replicas are for PostgreSQL and MySQL/MariaDB servers; a SQLite database has none "
                f"({REPLICAS.variable} / keyword replicas)"
            )
        for replica in values["replicas"]:
            if backend_of(replica) is not backend:
                raise ConfigurationError(
                    f"replica {redact(replica)!r} is not a {_BACKEND_NAMES[backend]} database like the primary "
                    f"{redact(url)!r}; a replica must be a copy of the primary"
                )
        config = cls(uri=url.render_as_string(hide_password=False), **values)
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


_WORKSPACE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _workspace(label: str, value: Any) -> str:
    """An MLflow workspace name: 2 to 63 lowercase letters, digits and inner hyphens."""
    if not isinstance(value, str) or not 2 <= len(value) <= 63 or not _WORKSPACE.fullmatch(value):
        raise _bad(label, value, "expected an MLflow workspace name: 2 to 63 lowercase letters, digits and inner hyphens")
    return value


def _float(*, minimum: float, maximum: float = float("inf")) -> Callable[[str, Any], float]:
    allowed = f"a finite number >= {minimum}" if maximum == float("inf") else f"a number from {minimum} to {maximum}"

    def parse(label: str, value: Any) -> float:
        if isinstance(value, bool):
            raise _bad(label, value, f"expected {allowed}")
        try:
            number = float(value) if isinstance(value, (int, float, str)) else None
        except (ValueError, OverflowError):  # not a number; an int beyond every double
            number = None
        if number is None or not minimum <= number <= maximum or number == float("inf"):
            raise _bad(label, value, f"expected {allowed}")
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


def _uri(label: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(label, value, "expected a database URI such as sqlite:///asyncstore.db")
    return value


def _uris(label: str, value: Any) -> tuple[str, ...]:
    """Database URIs: a comma-separated string or a list of strings/URLs, each normalised."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, (str, URL)) for i in items):
        raise _bad(label, value, "expected database URIs, as a list or separated by commas")
    uris = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            url = normalize_uri(item.strip() if isinstance(item, str) else item)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{label}: {exc}") from None
        uris.append(url.render_as_string(hide_password=False))
    return tuple(uris)


URI: Setting[str] = Setting(
    keyword="uri",
    variable=ENV_PREFIX + "DATABASE_URI",
    parse=_uri,
    default=DEFAULT_URI,
    meaning="the database; plain sqlite, postgresql and mysql URIs are mapped to their async drivers",
)
"""The database URI (``StoreConfig.load``'s first argument)."""

REPLICAS: Setting[tuple[str, ...]] = Setting(
    keyword="replicas",
    variable=ENV_PREFIX + "REPLICA_URIS",
    parse=_uris,
    default=(),
    meaning="read replicas of the database (PostgreSQL, MySQL/MariaDB), comma-separated: read-only calls go to them",
)
"""Read replicas (a setting of :data:`SETTINGS`; its variable is not named after its keyword)."""

SETTINGS: dict[str, Setting[Any]] = {
    s.keyword: s
    for s in (
        # SQLite: every connection is a thread of aiosqlite's, and the threads contend for
        # the GIL with the event loop; a few serve a web app's readers best, and a
        # connection opened under load (overflow) costs a thread and its set-up each
        # time. Measured with `asyncstore bench --workload mixed` (README, Performance).
        _setting("pool_size", _int(minimum=0), 10, "connections kept in the pool", sqlite=4),
        _setting(
            "max_overflow", _int(minimum=-1), 10, "extra connections allowed beyond pool_size under load", sqlite=0
        ),
        _setting(
            "pool_timeout", _float(minimum=0.0), 30.0,
            "seconds a caller waits for a free connection before TEMPORARILY_UNAVAILABLE",
        ),
        # MySQL servers drop idle connections after wait_timeout (8 h): replace them well before.
        _setting(
            "pool_recycle", _int(minimum=-1), -1,
            "seconds after which a connection is replaced; -1 never", mysql=3600,
        ),
        # Off for PostgreSQL: a transaction that meets a dead pooled connection fails
        # before COMMIT and the unit of work runs it again on a fresh one (SQLAlchemy then
        # recycles the stale pool), so a round trip on every checkout buys nothing.
        # Off for SQLite, which has no server. On for MySQL, whose servers drop idle
        # connections after wait_timeout.
        _setting(
            "pool_pre_ping", _bool, False,
            "test a connection on checkout (one round trip) so one the server dropped is replaced",
            mysql=True,
        ),
        _setting("echo", _bool, False, "log every SQL statement (SQLAlchemy's echo)"),
        _setting(
            "poolclass", _pool_class, cast("str | None", None),
            "name of a SQLAlchemy pool class; none picks the backend's default",
        ),
        _setting(
            "connect_retries", _int(minimum=0), 5,
            "retries of a failed connection attempt (server still starting)",
        ),
        _setting(
            "connect_backoff", _float(minimum=0.0), 0.2,
            "seconds before the first connection retry; doubles each time, capped at 5 s",
        ),
        _setting(
            "transaction_retries", _int(minimum=0), 3,
            "retries of a transaction that failed transiently, where safe",
        ),
        _setting(
            "sqlite_busy_timeout_ms", _int(minimum=0), 30_000,
            "milliseconds SQLite waits for a lock held by another process",
        ),
        _setting(
            "sqlite_checkpoint_interval", _float(minimum=0.0), 0.2,
            "seconds between WAL checkpoints of a SQLite file by a thread of the store's own, off the writers' "
            "commits (at most one per interval, only when the log changed); 0: SQLite checkpoints inside commits, "
            "its default",
        ),
        _setting("mysql_ssl_ca", _path, cast("str | None", None), "CA certificate file for TLS to MySQL"),
        _setting("mysql_ssl_cert", _path, cast("str | None", None), "client certificate file for TLS to MySQL"),
        _setting("mysql_ssl_key", _path, cast("str | None", None), "client key file for TLS to MySQL"),
        _setting(
            "mysql_local_infile", _bool, True,
            "write large span batches by LOAD DATA LOCAL INFILE, streamed (the server must allow local_infile, "
            "else multi-row INSERT); the client then sends what a server's LOAD DATA request names: "
            "trusted servers only",
        ),
        _setting(
            "workspace", _workspace, "default",
            "MLflow workspace of the experiments (created, found by name, searched) and jobs created",
        ),
        REPLICAS,
        _setting(
            "replica_max_lag", _float(minimum=0.0), 5.0,
            "seconds a replica may be behind the primary; further behind, its reads go to the primary",
        ),
        _setting(
            "replica_check_interval", _float(minimum=0.01), 1.0,
            "seconds between checks of a replica's lag; a replica that failed is tried again after as long",
        ),
    )
}
"""The settings of :class:`StoreConfig` (pool, retries, TLS, workspace), by keyword, in the README's order."""


def _job_setting(keyword: str, parse: Callable[[str, Any], T], default: T, meaning: str) -> Setting[T]:
    return Setting(
        keyword=keyword, variable=ENV_PREFIX + "JOB_" + keyword.upper(), parse=parse, default=default, meaning=meaning
    )


JOB_MAX_RETRIES = _job_setting("max_retries", _int(minimum=0), 3, "retries before retry_or_fail marks a job FAILED")
JOB_BACKOFF_BASE = _job_setting(
    "backoff_base", _float(minimum=0.0), 1.0, "seconds; the n-th retry waits min(cap, base * 2**n)"
)
JOB_BACKOFF_CAP = _job_setting("backoff_cap", _float(minimum=0.0), 300.0, "seconds; the longest wait before a retry")
JOB_BACKOFF_JITTER = _job_setting(
    "backoff_jitter", _float(minimum=0.0, maximum=1.0), 0.5,
    "share of each wait drawn at random: a wait of w lasts between (1 - jitter) * w and w",
)
JOB_SETTINGS: dict[str, Setting[Any]] = {
    s.keyword: s for s in (JOB_MAX_RETRIES, JOB_BACKOFF_BASE, JOB_BACKOFF_CAP, JOB_BACKOFF_JITTER)
}
"""The job queue's retry settings, read when a job call needs them (a keyword of that call wins)."""
