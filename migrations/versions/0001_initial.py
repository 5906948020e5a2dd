"""Initial schema: MLflow's tracking tables, traces, spans and jobs.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

from asyncstore.schema import mysql_collation

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Binary, NO PAD: keys differing only by case or trailing spaces stay distinct.
    collate = mysql_collation(op.get_bind().dialect)
    op.create_table('experiments',
    sa.Column('experiment_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('name', sa.String(length=500), nullable=False),
    sa.Column('artifact_location', sa.String(length=256), nullable=True),
    sa.Column('lifecycle_stage', sa.String(length=32), server_default='active', nullable=True),
    sa.Column('creation_time', sa.BigInteger(), nullable=True),
    sa.Column('last_update_time', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("lifecycle_stage IN ('active', 'deleted')", name=op.f('ck_experiments_lifecycle_stage')),
    sa.PrimaryKeyConstraint('experiment_id', name='experiment_pk'),
    sa.UniqueConstraint('name', name=op.f('uq_experiments_name')),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_table('jobs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('creation_time', sa.BigInteger(), nullable=False),
    sa.Column('job_name', sa.String(length=500), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('timeout', sa.Float(precision=53), nullable=True),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('result', sa.Text(), nullable=True),
    sa.Column('retry_count', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_update_time', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name='jobs_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_jobs_creation_time_id', 'jobs', ['creation_time', 'id'], unique=False)
    op.create_index('index_jobs_name_status_creation_time', 'jobs', ['job_name', 'status', 'creation_time'], unique=False)
    op.create_table('experiment_tags',
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('value', sa.String(length=5000), nullable=True),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_experiment_tags_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'experiment_id', name='experiment_tag_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_experiment_tags_experiment_id', 'experiment_tags', ['experiment_id'], unique=False)
    op.create_table('runs',
    sa.Column('run_uuid', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=250), nullable=True),
    sa.Column('source_type', sa.String(length=20), server_default='LOCAL', nullable=True),
    sa.Column('source_name', sa.String(length=500), nullable=True),
    sa.Column('entry_point_name', sa.String(length=50), nullable=True),
    sa.Column('user_id', sa.String(length=256), nullable=True),
    sa.Column('status', sa.String(length=9), server_default='RUNNING', nullable=True),
    sa.Column('start_time', sa.BigInteger(), nullable=True),
    sa.Column('end_time', sa.BigInteger(), nullable=True),
    sa.Column('deleted_time', sa.BigInteger(), nullable=True),
    sa.Column('source_version', sa.String(length=50), nullable=True),
    sa.Column('lifecycle_stage', sa.String(length=20), server_default='active', nullable=True),
    sa.Column('artifact_uri', sa.String(length=200), nullable=True),
    sa.Column('experiment_id', sa.Integer(), nullable=True),
    sa.CheckConstraint("lifecycle_stage IN ('active', 'deleted')", name=op.f('ck_runs_lifecycle_stage')),
    sa.CheckConstraint("source_type IN ('NOTEBOOK', 'JOB', 'LOCAL', 'UNKNOWN', 'PROJECT')", name=op.f('ck_runs_source_type')),
    sa.CheckConstraint("status IN ('SCHEDULED', 'FAILED', 'FINISHED', 'RUNNING', 'KILLED')", name=op.f('ck_runs_status')),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_runs_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_uuid', name='run_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_runs_experiment_id_lifecycle_stage_start_time', 'runs', ['experiment_id', 'lifecycle_stage', 'start_time'], unique=False)
    op.create_table('trace_info',
    sa.Column('request_id', sa.String(length=50), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('timestamp_ms', sa.BigInteger(), nullable=False),
    sa.Column('execution_time_ms', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=50), nullable=False),
    sa.Column('client_request_id', sa.String(length=50), nullable=True),
    sa.Column('request_preview', sa.String(length=1000), nullable=True),
    sa.Column('response_preview', sa.String(length=1000), nullable=True),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_trace_info_experiment_id_experiments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('request_id', name='trace_info_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_trace_info_client_request_id', 'trace_info', ['client_request_id'], unique=False)
    op.create_index('index_trace_info_experiment_id_timestamp_ms', 'trace_info', ['experiment_id', 'timestamp_ms'], unique=False)
    op.create_table('latest_metrics',
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('value', sa.Float(precision=53), nullable=False),
    sa.Column('timestamp', sa.BigInteger(), nullable=True),
    sa.Column('step', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('is_nan', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('run_uuid', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['run_uuid'], ['runs.run_uuid'], name=op.f('fk_latest_metrics_run_uuid_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'run_uuid', name='latest_metric_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_latest_metrics_key_value', 'latest_metrics', ['key', 'value'], unique=False)
    op.create_index('index_latest_metrics_run_uuid', 'latest_metrics', ['run_uuid'], unique=False)
    op.create_table('metrics',
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('value', sa.Float(precision=53), nullable=False),
    sa.Column('timestamp', sa.BigInteger(), nullable=False),
    sa.Column('step', sa.BigInteger(), server_default=sa.text('0'), nullable=False),
    sa.Column('is_nan', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('run_uuid', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['run_uuid'], ['runs.run_uuid'], name=op.f('fk_metrics_run_uuid_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'timestamp', 'step', 'run_uuid', 'value', 'is_nan', name='metric_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_metrics_run_uuid_key_step_timestamp', 'metrics', ['run_uuid', 'key', 'step', 'timestamp'], unique=False)
    op.create_table('params',
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('value', sa.String(length=8000), nullable=False),
    sa.Column('run_uuid', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['run_uuid'], ['runs.run_uuid'], name=op.f('fk_params_run_uuid_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'run_uuid', name='param_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_params_run_uuid', 'params', ['run_uuid'], unique=False)
    op.create_table('spans',
    sa.Column('trace_id', sa.String(length=50), nullable=False),
    sa.Column('experiment_id', sa.Integer(), nullable=False),
    sa.Column('span_id', sa.String(length=50), nullable=False),
    sa.Column('parent_span_id', sa.String(length=50), nullable=True),
    sa.Column('name', sa.Text(), nullable=True),
    sa.Column('type', sa.String(length=500), nullable=True),
    sa.Column('status', sa.String(length=50), nullable=False),
    sa.Column('start_time_unix_nano', sa.BigInteger(), nullable=False),
    sa.Column('end_time_unix_nano', sa.BigInteger(), nullable=True),
    sa.Column('duration_ns', sa.BigInteger(), sa.Computed('end_time_unix_nano - start_time_unix_nano', persisted=True), nullable=True),
    sa.Column('content', sa.Text().with_variant(mysql.LONGTEXT(), 'mariadb').with_variant(mysql.LONGTEXT(), 'mysql'), nullable=False),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.experiment_id'], name=op.f('fk_spans_experiment_id_experiments'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['trace_id'], ['trace_info.request_id'], name=op.f('fk_spans_trace_id_trace_info'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('trace_id', 'span_id', name='spans_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_spans_experiment_id', 'spans', ['experiment_id'], unique=False)
    op.create_index('index_spans_experiment_id_duration', 'spans', ['experiment_id', 'duration_ns'], unique=False)
    op.create_index('index_spans_experiment_id_start_time', 'spans', ['experiment_id', 'start_time_unix_nano'], unique=False)
    op.create_index('index_spans_experiment_id_status_type', 'spans', ['experiment_id', 'status', 'type'], unique=False)
    op.create_index('index_spans_experiment_id_type_status', 'spans', ['experiment_id', 'type', 'status'], unique=False)
    op.create_table('tags',
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('value', sa.String(length=8000), nullable=True),
    sa.Column('run_uuid', sa.String(length=32), nullable=False),
    sa.ForeignKeyConstraint(['run_uuid'], ['runs.run_uuid'], name=op.f('fk_tags_run_uuid_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'run_uuid', name='tag_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_tags_run_uuid', 'tags', ['run_uuid'], unique=False)
    op.create_table('trace_metrics',
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('value', sa.Float(precision=53), nullable=True),
    sa.Column('request_id', sa.String(length=50), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['trace_info.request_id'], name=op.f('fk_trace_metrics_request_id_trace_info'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('request_id', 'key', name='trace_metrics_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_trace_metrics_request_id', 'trace_metrics', ['request_id'], unique=False)
    op.create_table('trace_request_metadata',
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('value', sa.String(length=8000), nullable=True),
    sa.Column('request_id', sa.String(length=50), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['trace_info.request_id'], name=op.f('fk_trace_request_metadata_request_id_trace_info'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'request_id', name='trace_request_metadata_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_trace_request_metadata_request_id', 'trace_request_metadata', ['request_id'], unique=False)
    op.create_table('trace_tags',
    sa.Column('key', sa.String(length=250), nullable=False),
    sa.Column('value', sa.String(length=8000), nullable=True),
    sa.Column('request_id', sa.String(length=50), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['trace_info.request_id'], name=op.f('fk_trace_tags_request_id_trace_info'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', 'request_id', name='trace_tag_pk'),
    mysql_charset='utf8mb4',
    mysql_collate=collate,
    mysql_engine='InnoDB'
    )
    op.create_index('index_trace_tags_request_id', 'trace_tags', ['request_id'], unique=False)


def downgrade() -> None:
    op.drop_table('trace_tags')
    op.drop_table('trace_request_metadata')
    op.drop_table('trace_metrics')
    op.drop_table('tags')
    op.drop_table('spans')
    op.drop_table('params')
    op.drop_table('metrics')
    op.drop_table('latest_metrics')
    op.drop_table('trace_info')
    op.drop_table('runs')
    op.drop_table('experiment_tags')
    op.drop_table('jobs')
    op.drop_table('experiments')
