"""Table definitions: MLflow's tracking-schema names, types and limits.

This module *describes* the schema; the Alembic revisions under ``migrations/``
create it, and a test proves that the two agree on every backend. Change both
together (a new revision, never an edit of a released one).

Every table that MLflow 3.17 also has takes MLflow's column names, types,
nullability and limits (revision ``0003_mlflow_3_17_columns``), so that
``INSERT INTO mlflow_db.t SELECT ... FROM asyncstore_db.t`` copies a table. The
differences that remain, each on purpose:

* ``experiments.name`` is ``VARCHAR(500)`` (MLflow: 256) so the 500-character limit
  that asyncstore validates can be stored; wider, never narrower.
* Foreign keys cascade on delete (MLflow's do not): deleting an experiment or a
  trace cannot leave orphans behind. Only stricter.
* Server defaults on ``lifecycle_stage``, ``status``, ``source_type`` and the metric
  ``step``/``is_nan`` columns (MLflow sets them in Python): a row inserted by plain
  SQL gets MLflow's values.
* Extra indexes for the queries asyncstore runs (run search, metric history, span
  search, claiming jobs, listing jobs); MLflow's analytics indexes on ``spans``
  (cost covers) and ``trace_info`` (timestamp, request id) are not created, nor its
  ``index_spans_experiment_id``, a prefix of four other ``spans`` indexes (revision
  ``0005_spans_redundant_index``).
* On MySQL/MariaDB ``spans`` is keyed by an invisible ``AUTO_INCREMENT`` column,
  ``(trace_id, span_id)`` being its unique key ``spans_pk`` (:data:`ROW_ID`): the
  rows are stored in arrival order, not all over the table.
* On MySQL/MariaDB every table uses ``utf8mb4`` with a binary NO PAD collation, so
  keys that differ only by case or by trailing spaces are different keys (as on
  PostgreSQL and SQLite) and 4-byte UTF-8 is stored as it is. MLflow's tables use
  the server's default collation (case-insensitive): in an MLflow database the
  keys compare as MLflow's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    Float,
    ForeignKey,
    Index,
    Integer,
    JSON,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# MySQL/MariaDB table options: see the module docstring. The collation is binary
# and NO PAD: with a PAD SPACE collation (MariaDB's utf8mb4_bin) 'a' and 'a ' are the
# same key. The migrations create the tables with mysql_collation(dialect) of the
# server they run on; MariaDB's name is the one written here.
MYSQL_TABLE_ARGS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_nopad_bin",
}


def mysql_collation(dialect: Dialect) -> str:
    """The binary, NO PAD utf8mb4 collation of a MySQL or MariaDB server.

    MariaDB (10.2+) calls it ``utf8mb4_nopad_bin``, MySQL 8 ``utf8mb4_0900_bin``.
    MySQL 5.7 has none: there ``utf8mb4_bin`` is used and trailing spaces are
    ignored in comparisons (a documented limit).
    """
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    version = getattr(dialect, "server_version_info", None) or (0,)
    return "utf8mb4_0900_bin" if version >= (8, 0, 17) else "utf8mb4_bin"


ROW_ID = "asyncstore_row_id"
"""MySQL/MariaDB: the primary key of the tables in :data:`ROW_ORDERED` (revision
``0006_mysql_spans_row_id``), an invisible ``AUTO_INCREMENT`` column.

InnoDB stores rows in primary-key order; ``spans``' key ``(trace_id, span_id)``
starts with a random trace id, so its 1 KB rows were written all over the table.
Keyed by this column they are stored in arrival order (as PostgreSQL's heap and
SQLite's rowid tables store them), and the secondary indexes carry 8 bytes instead
of the 50-byte key. The table's own key stays unique, under its name
(``spans_pk``). ``SELECT *`` and ``INSERT`` without a column list do not see an
invisible column: the table reads and copies as MLflow's does.
"""

ROW_ORDERED = ("spans",)
"""The tables keyed by :data:`ROW_ID` on MySQL/MariaDB servers that have invisible columns."""


def has_row_order(dialect: Dialect) -> bool:
    """Whether a MySQL/MariaDB server has invisible columns (MariaDB 10.3, MySQL 8.0.23),
    so that the tables of :data:`ROW_ORDERED` are keyed by :data:`ROW_ID` there."""
    version = getattr(dialect, "server_version_info", None) or (0,)
    return dialect.name == "mysql" and version >= ((10, 3) if getattr(dialect, "is_mariadb", False) else (8, 0, 23))


def row_order_ddl(table: str, key: Sequence[str], key_name: str) -> str:
    """The ``ALTER TABLE`` that keys a MySQL table by an invisible :data:`ROW_ID`, keeping ``key`` unique as ``key_name``."""
    return (
        f"ALTER TABLE {table} DROP PRIMARY KEY, "
        f"ADD COLUMN {ROW_ID} BIGINT NOT NULL AUTO_INCREMENT INVISIBLE FIRST, "
        f"ADD PRIMARY KEY ({ROW_ID}), ADD CONSTRAINT {key_name} UNIQUE ({', '.join(key)})"
    )


# Limits (MLflow's, where MLflow has one).
EXPERIMENT_NAME_MAX = 500
EXPERIMENT_TAG_VALUE_MAX = 5000
KEY_MAX = 250
PARAM_VALUE_MAX = 6000  # validated limit; the column holds 8000 as in MLflow
PARAM_VALUE_COLUMN = 8000
TAG_VALUE_MAX = 8000
RUN_NAME_MAX = 250
USER_ID_MAX = 256
ARTIFACT_URI_MAX = 200
ARTIFACT_LOCATION_MAX = 256
TRACE_PREVIEW_MAX = 1000
TRACE_ID_MAX = 50
SPAN_ID_MAX = 50
SPAN_TYPE_MAX = 500
JOB_NAME_MAX = 500
WORKSPACE_MAX = 63
DEFAULT_WORKSPACE = "default"
"""MLflow's workspace for rows written without one (``experiments``, ``jobs``)."""
TRACE_NAME_MAX = 4096
SESSION_ID_MAX = 250
MODEL_NAME_MAX = 500

LIFECYCLE_STAGES = ("active", "deleted")
RUN_STATUSES = ("SCHEDULED", "FAILED", "FINISHED", "RUNNING", "KILLED")
SOURCE_TYPES = ("NOTEBOOK", "JOB", "LOCAL", "UNKNOWN", "PROJECT")

LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
Double = Float(precision=53)


def _workspace() -> Column[str]:
    return Column(
        "workspace", String(WORKSPACE_MAX), nullable=False, server_default=text(f"'{DEFAULT_WORKSPACE}'")
    )


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


experiments = Table(
    "experiments",
    metadata,
    Column("experiment_id", Integer, autoincrement=True),
    Column("name", String(EXPERIMENT_NAME_MAX), nullable=False),
    Column("artifact_location", String(ARTIFACT_LOCATION_MAX)),
    Column("lifecycle_stage", String(32), server_default="active"),
    Column("creation_time", BigInteger),
    Column("last_update_time", BigInteger),
    _workspace(),
    PrimaryKeyConstraint("experiment_id", name="experiment_pk"),
    UniqueConstraint("workspace", "name"),
    CheckConstraint(_in("lifecycle_stage", LIFECYCLE_STAGES), name="lifecycle_stage"),
    **MYSQL_TABLE_ARGS,
)

experiment_tags = Table(
    "experiment_tags",
    metadata,
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", Text),  # MLflow's type; the validated limit is EXPERIMENT_TAG_VALUE_MAX
    Column(
        "experiment_id",
        Integer,
        ForeignKey("experiments.experiment_id", ondelete="CASCADE"),
        nullable=False,
    ),
    PrimaryKeyConstraint("key", "experiment_id", name="experiment_tag_pk"),
    Index("index_experiment_tags_experiment_id", "experiment_id"),
    **MYSQL_TABLE_ARGS,
)

runs = Table(
    "runs",
    metadata,
    Column("run_uuid", String(32), nullable=False),
    Column("name", String(RUN_NAME_MAX)),
    Column("source_type", String(20), server_default="LOCAL"),
    Column("source_name", String(500)),
    Column("entry_point_name", String(50)),
    Column("user_id", String(USER_ID_MAX)),
    Column("status", String(9), server_default="RUNNING"),
    Column("start_time", BigInteger),
    Column("end_time", BigInteger),
    Column("deleted_time", BigInteger),
    Column("source_version", String(50)),
    Column("lifecycle_stage", String(20), server_default="active"),
    Column("artifact_uri", String(ARTIFACT_URI_MAX)),
    Column("experiment_id", Integer, ForeignKey("experiments.experiment_id", ondelete="CASCADE")),
    PrimaryKeyConstraint("run_uuid", name="run_pk"),
    CheckConstraint(_in("source_type", SOURCE_TYPES), name="source_type"),
    CheckConstraint(_in("status", RUN_STATUSES), name="status"),
    CheckConstraint(_in("lifecycle_stage", LIFECYCLE_STAGES), name="lifecycle_stage"),
    # Run search: experiment, lifecycle stage, then the default order.
    Index("index_runs_experiment_id_lifecycle_stage_start_time", "experiment_id", "lifecycle_stage", "start_time"),
    **MYSQL_TABLE_ARGS,
)


def _run_child(name: str, *columns: Column[Any], pk: tuple[str, ...], pk_name: str, index: tuple[str, ...]) -> Table:
    return Table(
        name,
        metadata,
        *columns,
        Column("run_uuid", String(32), ForeignKey("runs.run_uuid", ondelete="CASCADE"), nullable=False),
        PrimaryKeyConstraint(*pk, name=pk_name),
        Index(f"index_{name}_{'_'.join(index)}", *index),
        **MYSQL_TABLE_ARGS,
    )


tags = _run_child(
    "tags",
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", String(TAG_VALUE_MAX)),
    pk=("key", "run_uuid"),
    pk_name="tag_pk",
    index=("run_uuid",),
)

params = _run_child(
    "params",
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", String(PARAM_VALUE_COLUMN), nullable=False),
    pk=("key", "run_uuid"),
    pk_name="param_pk",
    index=("run_uuid",),
)

metrics = _run_child(
    "metrics",
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", Double, nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("step", BigInteger, nullable=False, server_default=text("0")),
    Column("is_nan", Boolean(create_constraint=False), nullable=False, server_default=false()),
    pk=("key", "timestamp", "step", "run_uuid", "value", "is_nan"),
    pk_name="metric_pk",
    # Metric history: one run, one key, in (step, timestamp) order.
    index=("run_uuid", "key", "step", "timestamp"),
)

latest_metrics = _run_child(
    "latest_metrics",
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", Double, nullable=False),
    Column("timestamp", BigInteger),
    Column("step", BigInteger, nullable=False, server_default=text("0")),
    Column("is_nan", Boolean(create_constraint=False), nullable=False, server_default=false()),
    pk=("key", "run_uuid"),
    pk_name="latest_metric_pk",
    index=("run_uuid",),
)
# Run search by metric value: WHERE key = ? AND value > ?.
Index("index_latest_metrics_key_value", latest_metrics.c.key, latest_metrics.c.value)

trace_info = Table(
    "trace_info",
    metadata,
    Column("request_id", String(TRACE_ID_MAX), nullable=False),
    Column(
        "experiment_id",
        Integer,
        ForeignKey("experiments.experiment_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("timestamp_ms", BigInteger, nullable=False),
    Column("execution_time_ms", BigInteger),
    Column("status", String(50), nullable=False),
    Column("client_request_id", String(50)),
    Column("request_preview", String(TRACE_PREVIEW_MAX)),
    Column("response_preview", String(TRACE_PREVIEW_MAX)),
    # MLflow's denormalised copies of what the spans say, for its trace analytics.
    Column("db_payload_generation", Integer, nullable=False, server_default=text("0")),
    Column("trace_name", String(TRACE_NAME_MAX)),
    Column("session_id", String(SESSION_ID_MAX)),
    Column("input_tokens", BigInteger),
    Column("output_tokens", BigInteger),
    Column("total_tokens", BigInteger),
    Column("cache_read_input_tokens", BigInteger),
    Column("cache_creation_input_tokens", BigInteger),
    Column("cache_creation_input_tokens_above_1hr", BigInteger),
    Column("input_cost", Double),
    Column("output_cost", Double),
    Column("total_cost", Double),
    PrimaryKeyConstraint("request_id", name="trace_info_pk"),
    Index("index_trace_info_experiment_id_timestamp_ms", "experiment_id", "timestamp_ms"),
    Index("index_trace_info_client_request_id", "client_request_id"),
    Index("index_trace_info_experiment_id_session_id", "experiment_id", "session_id"),
    **MYSQL_TABLE_ARGS,
)


def _trace_child(name: str, *columns: Column[Any], pk: tuple[str, ...], pk_name: str) -> Table:
    return Table(
        name,
        metadata,
        *columns,
        Column(
            "request_id",
            String(TRACE_ID_MAX),
            ForeignKey("trace_info.request_id", ondelete="CASCADE"),
            nullable=False,
        ),
        PrimaryKeyConstraint(*pk, name=pk_name),
        Index(f"index_{name}_request_id", "request_id"),
        **MYSQL_TABLE_ARGS,
    )


trace_tags = _trace_child(
    "trace_tags",
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", String(TAG_VALUE_MAX)),
    pk=("key", "request_id"),
    pk_name="trace_tag_pk",
)

trace_request_metadata = _trace_child(
    "trace_request_metadata",
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", String(TAG_VALUE_MAX)),
    pk=("key", "request_id"),
    pk_name="trace_request_metadata_pk",
)

trace_metrics = _trace_child(
    "trace_metrics",
    Column("key", String(KEY_MAX), nullable=False),
    Column("value", Double),
    pk=("request_id", "key"),
    pk_name="trace_metrics_pk",
)

spans = Table(
    "spans",
    metadata,
    Column(
        "trace_id",
        String(TRACE_ID_MAX),
        ForeignKey("trace_info.request_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column(
        "experiment_id",
        Integer,
        ForeignKey("experiments.experiment_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("span_id", String(SPAN_ID_MAX), nullable=False),
    Column("parent_span_id", String(SPAN_ID_MAX)),
    Column("name", Text),
    Column("type", String(SPAN_TYPE_MAX)),
    Column("status", String(50), nullable=False),
    Column("start_time_unix_nano", BigInteger, nullable=False),
    Column("end_time_unix_nano", BigInteger),
    Column(
        "duration_ns",
        BigInteger,
        Computed("end_time_unix_nano - start_time_unix_nano", persisted=True),
    ),
    Column("content", LongText, nullable=False),
    Column("input_cost", Double),
    Column("output_cost", Double),
    Column("total_cost", Double),
    Column("model_name", String(MODEL_NAME_MAX)),
    Column("model_provider", String(MODEL_NAME_MAX)),
    PrimaryKeyConstraint("trace_id", "span_id", name="spans_pk"),
    Index("index_spans_experiment_id_status_type", "experiment_id", "status", "type"),
    Index("index_spans_experiment_id_type_status", "experiment_id", "type", "status"),
    Index("index_spans_experiment_id_duration", "experiment_id", "duration_ns"),
    Index("index_spans_experiment_id_start_time", "experiment_id", "start_time_unix_nano"),
    **MYSQL_TABLE_ARGS,
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), nullable=False),
    Column("creation_time", BigInteger, nullable=False),
    Column("job_name", String(JOB_NAME_MAX), nullable=False),
    Column("params", Text, nullable=False),
    Column("timeout", Double),
    Column("status", Integer, nullable=False),
    Column("result", Text),
    Column("retry_count", Integer, nullable=False, server_default=text("0")),
    Column("last_update_time", BigInteger, nullable=False),
    Column("lease_expires_at", BigInteger),
    # NULL: claimable now (never retried); else the epoch ms of the next attempt.
    Column("next_attempt_at", BigInteger),
    _workspace(),
    # MLflow's job bookkeeping, which asyncstore keeps as MLflow writes it.
    Column("creator", String(255)),
    Column("executor_backend", String(255)),
    Column("status_message", Text),
    Column("status_details", JSON),
    Column("progress", JSON),
    Column("progress_updated_at", BigInteger),
    Column("scoped_permissions", JSON),
    Column("token_hash", String(64)),
    PrimaryKeyConstraint("id", name="jobs_pk"),
    # MLflow's index: jobs of one name by workspace and status, oldest first.
    Index("index_jobs_name_status_creation_time", "job_name", "workspace", "status", "creation_time"),
    # Claiming: PENDING jobs whose next attempt is due, in the claim's order (id last, so
    # the jobs of one batch need no sort).
    Index("index_jobs_claim_order", "status", "next_attempt_at", "creation_time", "id"),
    # Requeueing: RUNNING jobs whose lease has expired.
    Index("index_jobs_status_lease_expires_at", "status", "lease_expires_at"),
    # Listing: keyset pagination on (creation_time, id).
    Index("index_jobs_creation_time_id", "creation_time", "id"),
    **MYSQL_TABLE_ARGS,
)

# Links between entities (MLflow's table): a trace linked to a run is the row
# (source_type 'trace', source_id <trace id>, destination_type 'run', destination_id
# <run id>). No foreign keys: the two ends live in different tables.
ENTITY_TYPE_MAX = 36
ENTITY_ID_MAX = 36
entity_associations = Table(
    "entity_associations",
    metadata,
    Column("association_id", String(36), nullable=False),
    Column("source_type", String(ENTITY_TYPE_MAX), nullable=False),
    Column("source_id", String(ENTITY_ID_MAX), nullable=False),
    Column("destination_type", String(ENTITY_TYPE_MAX), nullable=False),
    Column("destination_id", String(ENTITY_ID_MAX), nullable=False),
    Column("created_time", BigInteger),
    PrimaryKeyConstraint(
        "source_type", "source_id", "destination_type", "destination_id", name="entity_associations_pk"
    ),
    Index("index_entity_associations_association_id", "association_id"),
    Index(
        "index_entity_associations_reverse_lookup", "destination_type", "destination_id", "source_type", "source_id"
    ),
    **MYSQL_TABLE_ARGS,
)

__all__ = [
    "entity_associations",
    "experiment_tags",
    "experiments",
    "jobs",
    "latest_metrics",
    "metadata",
    "metrics",
    "params",
    "runs",
    "spans",
    "tags",
    "trace_info",
    "trace_metrics",
    "trace_request_metadata",
    "trace_tags",
]
