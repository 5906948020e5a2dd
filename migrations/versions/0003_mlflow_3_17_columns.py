"""MLflow 3.17's columns on every table both schemas have.

So that a table copies between an asyncstore database and an MLflow one with plain
``INSERT ... SELECT``, and so that the same statements serve both:

* ``experiments.workspace`` (NOT NULL, default ``'default'``), and names unique per
  workspace instead of overall;
* ``experiment_tags.value`` becomes ``TEXT``;
* ``trace_info``: the trace name, session id, token counts and costs, and
  ``db_payload_generation``; an index on (experiment_id, session_id) as MLflow has.
  As MLflow's revision 75868b020152 does, the tag ``mlflow.traceName`` and the
  metadata ``mlflow.trace.session``, ``mlflow.trace.tokenUsage`` and
  ``mlflow.trace.cost`` move from their rows into these columns (and back on
  downgrade); a count or cost that is not a number is dropped, as MLflow drops it;
* ``spans``: costs, model name and provider;
* ``jobs``: ``workspace`` and MLflow's bookkeeping columns (creator, executor backend,
  status message and details, progress, scoped permissions, token hash);
  ``next_attempt_at`` becomes nullable, NULL meaning "claimable now" as in MLflow
  (asyncstore itself still writes the creation time); MLflow's ``index_jobs_name_status_creation_time`` with
  its ``workspace`` column;
* MLflow's ``entity_associations`` table (links between traces, runs and other
  entities).

Rows written at earlier revisions keep their values; the other new columns are NULL
(or their defaults). The downgrade drops them again (their values are lost).

Revision ID: 0003_mlflow_3_17_columns
Revises: 0002_job_queue
Create Date: 2026-12-05
"""

from __future__ import annotations

from typing import Any

import json
import math

import sqlalchemy as sa
from alembic import op

from asyncstore.schema import mysql_collation

revision = "0003_mlflow_3_17_columns"
down_revision = "0002_job_queue"
branch_labels = None
depends_on = None

_DEFAULT_WORKSPACE = sa.text("'default'")
_Double = sa.Float(precision=53)
_TRACE_INFO = (
    ("db_payload_generation", sa.Integer(), False, sa.text("0")),
    ("trace_name", sa.String(4096), True, None),
    ("session_id", sa.String(250), True, None),
    ("input_tokens", sa.BigInteger(), True, None),
    ("output_tokens", sa.BigInteger(), True, None),
    ("total_tokens", sa.BigInteger(), True, None),
    ("cache_read_input_tokens", sa.BigInteger(), True, None),
    ("cache_creation_input_tokens", sa.BigInteger(), True, None),
    ("cache_creation_input_tokens_above_1hr", sa.BigInteger(), True, None),
    ("input_cost", _Double, True, None),
    ("output_cost", _Double, True, None),
    ("total_cost", _Double, True, None),
)
_SPANS = (
    ("input_cost", _Double),
    ("output_cost", _Double),
    ("total_cost", _Double),
    ("model_name", sa.String(500)),
    ("model_provider", sa.String(500)),
)
_JOBS = (
    ("creator", sa.String(255)),
    ("executor_backend", sa.String(255)),
    ("status_message", sa.Text()),
    ("status_details", sa.JSON()),
    ("progress", sa.JSON()),
    ("progress_updated_at", sa.BigInteger()),
    ("scoped_permissions", sa.JSON()),
    ("token_hash", sa.String(64)),
)


_TEXT_KEYS = (("trace_tags", "mlflow.traceName", "trace_name", 4096), ("trace_request_metadata", "mlflow.trace.session", "session_id", 250))
_JSON_KEYS = {
    "mlflow.trace.tokenUsage": (
        "input_tokens", "output_tokens", "total_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
        "cache_creation_input_tokens_above_1hr",
    ),
    "mlflow.trace.cost": ("input_cost", "output_cost", "total_cost"),
}
_KEYED = {name: sa.table(name, sa.column("request_id"), sa.column("key"), sa.column("value")) for name, *_ in _TEXT_KEYS}
_INFO = sa.table(
    "trace_info", sa.column("request_id"), sa.column("trace_name"), sa.column("session_id"),
    *(sa.column(c) for names in _JSON_KEYS.values() for c in names),
)
_METADATA = _KEYED["trace_request_metadata"]


def _number(key: str, value: Any) -> int | float | None:
    """A token count (whole) or a cost (finite) out of MLflow's JSON, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if key == "mlflow.trace.tokenUsage":
        return int(value) if value == int(value) and abs(value) < 2**63 else None
    return float(value)


def _rows_to_columns() -> None:
    bind = op.get_bind()
    info = _INFO.c
    for table_name, key, column, limit in _TEXT_KEYS:
        table = _KEYED[table_name]
        row = (table.c.request_id == info.request_id) & (table.c.key == key)
        value = sa.select(sa.func.substr(table.c.value, 1, limit)).where(row).scalar_subquery()
        bind.execute(_INFO.update().where(sa.exists().where(row)).values({column: value}))
        bind.execute(table.delete().where(table.c.key == key))
    m = _METADATA.c
    found = bind.execute(sa.select(m.request_id, m.key, m.value).where(m.key.in_(list(_JSON_KEYS)))).all()
    for request_id, key, text in found:
        try:
            given = json.loads(text)
        except (TypeError, ValueError):
            given = None
        given = given if isinstance(given, dict) else {}
        values = {c: n for c in _JSON_KEYS[key] if (n := _number(key, given.get(c))) is not None}
        if values:
            bind.execute(_INFO.update().where(info.request_id == request_id).values(values))
    bind.execute(_METADATA.delete().where(m.key.in_(list(_JSON_KEYS))))


def _columns_to_rows() -> None:
    bind = op.get_bind()
    info = _INFO.c
    for table_name, key, column, _ in _TEXT_KEYS:
        source = sa.select(info.request_id, sa.literal(key), info[column]).where(info[column].isnot(None))
        bind.execute(_KEYED[table_name].insert().from_select(["request_id", "key", "value"], source))
    names = [c for columns in _JSON_KEYS.values() for c in columns]
    rows = []
    query = sa.select(info.request_id, *(info[c] for c in names)).where(sa.or_(*(info[c].isnot(None) for c in names)))
    for found in bind.execute(query).mappings():
        for key, columns in _JSON_KEYS.items():
            values = {c: found[c] for c in columns if found[c] is not None}
            if values:
                rows.append({"request_id": found["request_id"], "key": key, "value": json.dumps(values)})
    if rows:
        bind.execute(_METADATA.insert(), rows)


def _mysql_table_args() -> dict[str, Any]:
    collate = mysql_collation(op.get_bind().dialect)
    return {"mysql_charset": "utf8mb4", "mysql_collate": collate, "mysql_engine": "InnoDB"}


def upgrade() -> None:
    op.create_table(
        "entity_associations",
        sa.Column("association_id", sa.String(36), nullable=False),
        sa.Column("source_type", sa.String(36), nullable=False),
        sa.Column("source_id", sa.String(36), nullable=False),
        sa.Column("destination_type", sa.String(36), nullable=False),
        sa.Column("destination_id", sa.String(36), nullable=False),
        sa.Column("created_time", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint(
            "source_type", "source_id", "destination_type", "destination_id", name="entity_associations_pk"
        ),
        **_mysql_table_args(),
    )
    op.create_index("index_entity_associations_association_id", "entity_associations", ["association_id"])
    op.create_index(
        "index_entity_associations_reverse_lookup",
        "entity_associations",
        ["destination_type", "destination_id", "source_type", "source_id"],
    )
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("workspace", sa.String(63), nullable=False, server_default=_DEFAULT_WORKSPACE))
        batch.drop_constraint("uq_experiments_name", type_="unique")
        batch.create_unique_constraint("uq_experiments_workspace_name", ["workspace", "name"])
    with op.batch_alter_table("experiment_tags") as batch:
        batch.alter_column("value", type_=sa.Text(), existing_type=sa.String(5000), existing_nullable=True)
    with op.batch_alter_table("trace_info") as batch:
        for name, type_, nullable, default in _TRACE_INFO:
            batch.add_column(sa.Column(name, type_, nullable=nullable, server_default=default))
    op.create_index(
        "index_trace_info_experiment_id_session_id", "trace_info", ["experiment_id", "session_id"], unique=False
    )
    _rows_to_columns()
    with op.batch_alter_table("spans") as batch:
        for name, type_ in _SPANS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.drop_index("index_jobs_name_status_creation_time", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("workspace", sa.String(63), nullable=False, server_default=_DEFAULT_WORKSPACE))
        for name, type_ in _JOBS:
            batch.add_column(sa.Column(name, type_, nullable=True))
        batch.alter_column(
            "next_attempt_at", existing_type=sa.BigInteger(), nullable=True, server_default=None
        )
    op.create_index(
        "index_jobs_name_status_creation_time",
        "jobs",
        ["job_name", "workspace", "status", "creation_time"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_table("entity_associations")
    op.drop_index("index_jobs_name_status_creation_time", table_name="jobs")
    op.execute("UPDATE jobs SET next_attempt_at = 0 WHERE next_attempt_at IS NULL")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column(
            "next_attempt_at", existing_type=sa.BigInteger(), nullable=False, server_default=sa.text("0")
        )
        for name, _ in reversed(_JOBS):
            batch.drop_column(name)
        batch.drop_column("workspace")
    op.create_index(
        "index_jobs_name_status_creation_time", "jobs", ["job_name", "status", "creation_time"], unique=False
    )
    # SQLite: ALTER TABLE DROP COLUMN (3.35+); a rebuilt copy could not insert into the
    # generated duration_ns column.
    with op.batch_alter_table("spans", recreate="never") as batch:
        for name, _ in reversed(_SPANS):
            batch.drop_column(name)
    op.drop_index("index_trace_info_experiment_id_session_id", table_name="trace_info")
    _columns_to_rows()
    with op.batch_alter_table("trace_info") as batch:
        for name, *_ in reversed(_TRACE_INFO):
            batch.drop_column(name)
    with op.batch_alter_table("experiment_tags") as batch:
        batch.alter_column("value", type_=sa.String(5000), existing_type=sa.Text(), existing_nullable=True)
    with op.batch_alter_table("experiments") as batch:
        batch.drop_constraint("uq_experiments_workspace_name", type_="unique")
        batch.create_unique_constraint("uq_experiments_name", ["name"])
        batch.drop_column("workspace")
