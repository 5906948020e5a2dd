"""Configuration: URI normalisation, ASYNCSTORE_* variables, precedence, errors, redaction."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from asyncstore import ConfigurationError, InvalidParameter, StoreConfig, normalize_uri
from asyncstore.config import DEFAULT_URI, JOB_SETTINGS, SETTINGS, URI, Backend, redact
from asyncstore.jobs.rules import RetryPolicy, retry_policy

PASSWORD = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("sqlite+pysqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("sqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("sqlite+aiosqlite:///a.db", "sqlite+aiosqlite:///a.db"),
        ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("mysql://u@h/db", "mysql+aiomysql://u@h/db?charset=utf8mb4"),
        ("mysql+pymysql://u@h/db", "mysql+aiomysql://u@h/db?charset=utf8mb4"),
        ("mysql+aiomysql://u@h/db?charset=latin1", "mysql+aiomysql://u@h/db?charset=latin1"),
        ("mariadb://u@h/db", "mariadb+aiomysql://u@h/db?charset=utf8mb4"),
    ],
)
def test_uri_normalisation(given: str, expected: str) -> None:
    assert normalize_uri(given) == make_url(expected)


@pytest.mark.parametrize(
    ("uri", "backend"),
    [("sqlite://", Backend.SQLITE), ("postgres://h/d", Backend.POSTGRESQL), ("mariadb://h/d", Backend.MYSQL)],
)
def test_backend_of_uri(uri: str, backend: Backend) -> None:
    assert StoreConfig.load(uri).backend is backend


@pytest.mark.parametrize("uri", ["oracle://u@h/db", "mssql+pyodbc://u@h/db", "mongodb://h/db"])
def test_unsupported_scheme_lists_supported_ones(uri: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        normalize_uri(uri)
    message = str(info.value)
    assert uri.split("://")[0] in message
    for scheme in ("sqlite://", "postgresql://", "postgres://", "mysql://", "mariadb://"):
        assert scheme in message


@pytest.mark.parametrize("uri", ["not a uri", "postgresql://u:pw@h:notaport/db"])
def test_unparseable_uri(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="could not parse database URI"):
        StoreConfig.load(uri)


def test_database_uri_precedence_and_default() -> None:
    env = {"ASYNCSTORE_DATABASE_URI": "postgresql://env@h/db"}
    assert StoreConfig.load(environ={}).uri == normalize_uri(DEFAULT_URI).render_as_string(False)
    assert StoreConfig.load(environ=env).uri == "postgresql+asyncpg://env@h/db"
    assert StoreConfig.load("mysql://kw@h/db", environ=env).uri.startswith("mysql+aiomysql://kw@h/db")


def test_environment_is_read_at_load_time_not_import_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASYNCSTORE_DATABASE_URI", "postgres://late@h/db")
    monkeypatch.setenv("ASYNCSTORE_POOL_SIZE", "7")
    config = StoreConfig.load()
    assert (config.uri, config.pool_size) == ("postgresql+asyncpg://late@h/db", 7)


# Each variable: (field, a raw environment value, the parsed value, a keyword value that wins).
VARIABLES = [
    ("pool_size", "3", 3, 4),
    ("max_overflow", "-1", -1, 2),
    ("pool_timeout", "2.5", 2.5, 1.0),
    ("pool_recycle", "120", 120, 60),
    ("pool_pre_ping", "on", True, False),
    ("echo", "yes", True, False),
    ("poolclass", "NullPool", "NullPool", "AsyncAdaptedQueuePool"),
    ("connect_retries", "0", 0, 2),
    ("connect_backoff", "0.5", 0.5, 0.1),
    ("transaction_retries", "1", 1, 5),
    ("sqlite_busy_timeout_ms", "100", 100, 200),
    ("sqlite_checkpoint_interval", "0", 0.0, 1.5),
    ("replica_max_lag", "0.5", 0.5, 10.0),
    ("replica_check_interval", "5", 5.0, 0.25),
]


@pytest.mark.parametrize(("field", "raw", "parsed", "keyword"), VARIABLES)
def test_every_variable_and_precedence(field: str, raw: str, parsed: object, keyword: object) -> None:
    uri = "postgresql://u@h/db"
    default = getattr(StoreConfig.load(uri, environ={}), field)
    env = {f"ASYNCSTORE_{field.upper()}": raw}
    from_env = getattr(StoreConfig.load(uri, environ=env), field)
    from_keyword = getattr(StoreConfig.load(uri, environ=env, **{field: keyword}), field)
    assert from_env == parsed != default
    assert from_keyword == keyword != from_env


@pytest.mark.parametrize("name", ["ca", "cert", "key"])
def test_mysql_ssl_variables(name: str, tmp_path: Path) -> None:
    env_file, kw_file = tmp_path / "env.pem", tmp_path / "kw.pem"
    env_file.write_text("x")
    kw_file.write_text("x")
    env = {f"ASYNCSTORE_MYSQL_SSL_{name.upper()}": str(env_file)}
    assert getattr(StoreConfig.load("mysql://u@h/db", environ=env), f"mysql_ssl_{name}") == str(env_file)
    chosen = StoreConfig.load("mysql://u@h/db", environ=env, **{f"mysql_ssl_{name}": str(kw_file)})
    assert getattr(chosen, f"mysql_ssl_{name}") == str(kw_file)
    missing = {f"ASYNCSTORE_MYSQL_SSL_{name.upper()}": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigurationError, match=f"ASYNCSTORE_MYSQL_SSL_{name.upper()}=.*missing.pem.*existing"):
        StoreConfig.load("mysql://u@h/db", environ=missing)


def test_replica_uris_from_the_variable_or_the_keyword_normalised_and_configured_like_the_primary() -> None:
    env = {"ASYNCSTORE_REPLICA_URIS": " postgresql://u:pw@r1:5433/db, ,postgres://u@r2/db "}
    config = StoreConfig.load("postgresql://u@h/db", environ=env, pool_size=3)
    assert config.replicas == ("postgresql+asyncpg://u:pw@r1:5433/db", "postgresql+asyncpg://u@r2/db")
    assert "pw" not in repr(config) and "r1:5433" in repr(config)
    chosen = StoreConfig.load("mysql://u@h/db", environ=env, replicas=["mariadb://u@r3/db"])
    assert chosen.replicas == ("mariadb+aiomysql://u@r3/db?charset=utf8mb4",)
    replica = config.replica(config.replicas[0])
    assert (replica.uri, replica.replicas, replica.pool_size, replica.connect_retries) == (config.replicas[0], (), 3, 0)
    assert StoreConfig.load("postgresql://u@h/db", environ={}).replicas == ()


@pytest.mark.parametrize(
    ("uri", "replicas", "message"),
    [
        ("sqlite:///x.db", ["postgresql://u@r/db"], "read replicas are for PostgreSQL and MySQL/MariaDB"),
        ("mysql://u@h/db", ["postgresql://u@r/db"], "is not a MySQL database like the primary"),
        ("postgresql://u@h/db", 5, "keyword replicas=5 is not valid: expected database URIs"),
        ("postgresql://u@h/db", ["postgresql://u@r/db", 7], "expected database URIs"),
        ("postgresql://u@h/db", "oracle://u@r/db", "keyword replicas: database URI scheme 'oracle' is not supported"),
    ],
)
def test_bad_replicas_are_refused_saying_why(uri: str, replicas: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        StoreConfig.load(uri, environ={}, replicas=replicas)


def test_server_defaults_differ_by_backend() -> None:
    mysql = StoreConfig.load("mysql://u@h/db", environ={})
    pg = StoreConfig.load("postgresql://u@h/db", environ={})
    sqlite = StoreConfig.load("sqlite:///x.db", environ={})
    # MySQL drops idle connections after wait_timeout (8 h): recycle well before, and ping.
    # PostgreSQL re-runs a transaction that met a dead pooled connection instead of pinging.
    assert (mysql.pool_recycle, mysql.pool_pre_ping) == (3600, True)
    assert (pg.pool_recycle, pg.pool_pre_ping) == (-1, False)
    assert sqlite.pool_pre_ping is False


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("POOL_SIZE", "ten", "whole number >= 0"),
        ("POOL_SIZE", "-3", "whole number >= 0"),
        ("MAX_OVERFLOW", "1.5", "whole number >= -1"),
        ("POOL_TIMEOUT", "-1", "finite number >= 0"),
        ("POOL_TIMEOUT", "inf", "finite number >= 0"),
        ("POOL_TIMEOUT", "soon", "finite number >= 0"),
        ("POOL_RECYCLE", "-2", "whole number >= -1"),
        ("POOL_PRE_PING", "maybe", "true/false"),
        ("ECHO", "2", "true/false"),
        ("POOLCLASS", "FastPool", "AsyncAdaptedQueuePool, NullPool, StaticPool"),
        ("CONNECT_RETRIES", "many", "whole number >= 0"),
    ],
)
def test_bad_environment_value_names_variable_value_and_allowed(variable: str, value: str, allowed: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        StoreConfig.load("postgresql://u@h/db", environ={f"ASYNCSTORE_{variable}": value})
    message = str(info.value)
    assert f"ASYNCSTORE_{variable}={value!r}" in message
    assert allowed in message


@pytest.mark.parametrize(
    ("keyword", "value", "allowed"),
    [
        ("pool_size", "ten", "whole number"),
        ("pool_size", True, "whole number"),
        ("pool_timeout", -0.5, "finite number >= 0"),
        ("pool_timeout", 10**400, "finite number >= 0"),  # an int beyond every double
        ("poolclass", "QueuePool", "NullPool"),
        ("echo", "loud", "true/false"),
    ],
)
def test_bad_keyword_value_names_keyword_value_and_allowed(keyword: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        StoreConfig.load("postgresql://u@h/db", environ={}, **{keyword: value})
    assert f"keyword {keyword}={value!r}" in str(info.value) and allowed in str(info.value)


def test_unknown_option_lists_allowed_ones() -> None:
    with pytest.raises(ConfigurationError, match="unknown option.*pool_sise.*allowed: pool_size"):
        StoreConfig.load("sqlite://", pool_sise=3)


def test_pool_combinations_that_cannot_work() -> None:
    with pytest.raises(ConfigurationError, match="in-memory SQLite.*StaticPool"):
        StoreConfig.load("sqlite:///:memory:", poolclass="NullPool", environ={})
    with pytest.raises(ConfigurationError, match="pool_size 0"):
        StoreConfig.load("postgresql://u@h/db", pool_size=0, environ={})
    assert StoreConfig.load("postgresql://u@h/db", pool_size=0, poolclass="NullPool", environ={}).pool_size == 0
    assert StoreConfig.load("sqlite://", environ={}).poolclass == "StaticPool"


def test_config_is_hashable_and_equal_for_equal_settings() -> None:
    a = StoreConfig.load("postgres://u@h/db", pool_size=3, environ={})
    b = StoreConfig.load("postgresql://u@h/db", environ={"ASYNCSTORE_POOL_SIZE": "3"})
    assert a == b and hash(a) == hash(b)
    assert a != StoreConfig.load("postgres://u@h/db", pool_size=4, environ={})


def test_password_never_in_repr_str_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    uri = f"postgresql://user:{PASSWORD}@db.example:5432/app"
    caplog.set_level(logging.DEBUG)
    config = StoreConfig.load(uri, environ={}, replicas=[uri])
    assert PASSWORD in config.uri and PASSWORD in config.replicas[0]  # kept for connecting...
    shown = [repr(config), str(config), config.safe_uri, redact(uri)]  # ...never shown
    for bad in (
        lambda: StoreConfig.load(uri, pool_size="ten", environ={}),
        lambda: StoreConfig.load(f"oracle://user:{PASSWORD}@h/db", environ={}),
        lambda: StoreConfig.load(f"postgresql://user:{PASSWORD}@h:port/db", environ={}),
        lambda: StoreConfig.load(environ={"ASYNCSTORE_DATABASE_URI": f"nosuch://u:{PASSWORD}@h/d"}),
        lambda: StoreConfig.load(uri, environ={}, replicas=[f"mysql://user:{PASSWORD}@replica/db"]),
        lambda: StoreConfig.load(uri, environ={}, replicas=f"postgresql://user:{PASSWORD}@h:port/db"),
    ):
        with pytest.raises(ConfigurationError) as info:
            bad()
        shown += [str(info.value), repr(info.value)]
    shown += [record.getMessage() for record in caplog.records]
    assert all(PASSWORD not in text for text in shown), shown
    assert "***" in config.safe_uri and "user" in config.safe_uri


# --- one table of settings -------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_tables() -> list[list[list[str]]]:
    """The markdown tables of the README's ``## Configuration`` section, cells unquoted."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    tables: list[list[list[str]]] = [[]]
    for line in section.splitlines():
        if not line.startswith("|"):
            if tables[-1]:
                tables.append([])
            continue
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if not set(cells[0]) <= {"-", " "}:
            tables[-1].append(cells)
    return [table for table in tables if table]


def test_readme_configuration_tables_list_exactly_the_settings_and_their_defaults() -> None:
    store_table, job_table = _readme_tables()
    assert store_table[0][:3] == ["variable", "keyword", "default"]
    documented = [tuple(row[:3]) for row in store_table[1:]]
    declared = [(s.variable, s.keyword, s.describe_default()) for s in (URI, *SETTINGS.values())]
    assert documented == declared
    assert job_table[0][:2] == ["variable", "default"]
    assert [tuple(row[:2]) for row in job_table[1:]] == [
        (s.variable, s.describe_default()) for s in JOB_SETTINGS.values()
    ]


@pytest.mark.parametrize("uri", ["sqlite:///x.db", "postgresql://u@h/db", "mysql://u@h/db"])
def test_load_defaults_are_the_declared_ones(uri: str) -> None:
    config = StoreConfig.load(uri, environ={})
    assert {name: getattr(config, name) for name in SETTINGS} == {
        name: setting.default_for(config.backend) for name, setting in SETTINGS.items()
    }
    assert [f.name for f in dataclasses.fields(StoreConfig)] == ["uri", *SETTINGS]
    assert retry_policy(environ={}) == RetryPolicy(*(s.default for s in JOB_SETTINGS.values()))


def test_public_api_is_static_and_names_every_entity_and_error() -> None:
    import asyncstore
    from asyncstore import entities, errors

    public = set(asyncstore.__all__)
    for module in (entities, errors):
        classes = {
            name
            for name, value in vars(module).items()
            if isinstance(value, type) and value.__module__ == module.__name__ and not name.startswith("_")
        }
        assert classes and classes <= public, classes - public
    assert "Page" in public
    assert all(getattr(asyncstore, name, None) is not None for name in asyncstore.__all__)
    assert len(public) == len(asyncstore.__all__)
