"""Job claims read the queue in index order: ``index_jobs_claim_order``.

A claim takes the oldest due PENDING jobs ``ORDER BY next_attempt_at,
creation_time, id``. The index it used, ``index_jobs_status_next_attempt_at``
(status, next_attempt_at, creation_time), lacked ``id``, so the jobs of one
``create_many`` batch (one creation time) were one group the database had to read
and sort whole on every claim: a claim's cost grew with the batch. The new index
ends with ``id`` and replaces it, so a claim reads just the rows it takes. Nothing
else changes.

Revision ID: 0004_job_claim_order
Revises: 0003_mlflow_3_17_columns
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0004_job_claim_order"
down_revision = "0003_mlflow_3_17_columns"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "index_jobs_claim_order", "jobs", ["status", "next_attempt_at", "creation_time", "id"], unique=False
    )
    op.drop_index("index_jobs_status_next_attempt_at", table_name="jobs")


def downgrade() -> None:
    op.create_index(
        "index_jobs_status_next_attempt_at", "jobs", ["status", "next_attempt_at", "creation_time"], unique=False
    )
    op.drop_index("index_jobs_claim_order", table_name="jobs")
