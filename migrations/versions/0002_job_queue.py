"""Job queue: leases and delayed retries.

Adds ``jobs.lease_expires_at`` (when a RUNNING job's worker must have sent a
heartbeat, epoch ms) and ``jobs.next_attempt_at`` (when a PENDING job may be
claimed again after a retry backoff, epoch ms), with the indexes that claiming
and requeueing use.

Revision ID: 0002_job_queue
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_job_queue"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_expires_at", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("next_attempt_at", sa.BigInteger(), server_default=sa.text("0"), nullable=False)
        )
    op.create_index(
        "index_jobs_status_next_attempt_at", "jobs", ["status", "next_attempt_at", "creation_time"], unique=False
    )
    op.create_index("index_jobs_status_lease_expires_at", "jobs", ["status", "lease_expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("index_jobs_status_lease_expires_at", table_name="jobs")
    op.drop_index("index_jobs_status_next_attempt_at", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("next_attempt_at")
        batch.drop_column("lease_expires_at")
