"""``spans`` loses ``index_spans_experiment_id``: four other indexes begin with ``experiment_id``.

``index_spans_experiment_id (experiment_id)`` is a prefix of
``index_spans_experiment_id_status_type``, ``…_type_status``, ``…_duration`` and
``…_start_time``, each of which serves a lookup by experiment (a search, the
cascade of an experiment's deletion, MySQL's foreign key) as well. It bought no
query and cost every span written one more index entry, at a random place in
the tree (its entries are ordered by the random trace id after the experiment):
``asyncstore serve`` on SQLite stores about 5-8% more spans per second without it.
MLflow's databases keep theirs (their schema is MLflow's).

Revision ID: 0005_spans_redundant_index
Revises: 0004_job_claim_order
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0005_spans_redundant_index"
down_revision = "0004_job_claim_order"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("index_spans_experiment_id", table_name="spans")


def downgrade() -> None:
    op.create_index("index_spans_experiment_id", "spans", ["experiment_id"], unique=False)
