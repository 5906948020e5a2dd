"""MySQL/MariaDB: ``spans`` rows are stored in arrival order, under an invisible ``asyncstore_row_id``.

InnoDB stores a table's rows in the order of its primary key. The key of
``spans``, ``(trace_id, span_id)``, starts with a random trace id, so each batch of
spans was written into pages all over the table, pages of 1 KB rows that stop
fitting in the buffer pool long before the table's other indexes do; and every
secondary index entry carried that 50-byte key, ordered by it within an
experiment, status and type. Under ``asyncstore serve`` on MariaDB's default 128 MB
buffer pool the write rate fell by a third as the table grew past it.

The primary key becomes ``asyncstore_row_id``, an ``AUTO_INCREMENT`` column declared
``INVISIBLE``: ``SELECT *`` and ``INSERT`` without a column list do not see it, so
the table still reads and copies as MLflow's ``spans`` does. ``(trace_id, span_id)``
stays unique (key ``spans_pk``), so upserts and ``LOAD DATA ... REPLACE`` behave as
before. New rows go at the end of the table, and the secondary indexes carry an
8-byte row id. PostgreSQL (heap tables) and SQLite (rowid tables) already store
rows in arrival order: nothing changes there.

Upgrading rebuilds ``spans`` on MySQL/MariaDB (a table copy: time in proportion to
its size). On a server without invisible columns (MySQL before 8.0.23) the
table is left as it is.

Revision ID: 0006_mysql_spans_row_id
Revises: 0005_spans_redundant_index
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from asyncstore.schema import ROW_ID, has_row_order, row_order_ddl

revision = "0006_mysql_spans_row_id"
down_revision = "0005_spans_redundant_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if has_row_order(op.get_bind().dialect):
        op.execute(row_order_ddl("spans", ("trace_id", "span_id"), "spans_pk"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "mysql" and ROW_ID in {c["name"] for c in sa.inspect(bind).get_columns("spans")}:
        op.execute(
            f"ALTER TABLE spans DROP PRIMARY KEY, DROP COLUMN {ROW_ID}, DROP INDEX spans_pk, "
            "ADD PRIMARY KEY (trace_id, span_id)"
        )
