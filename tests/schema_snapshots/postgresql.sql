-- revision 0006_mysql_spans_row_id; regenerate with: python -m tests.schema_snapshots --update

CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL,
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

CREATE TABLE entity_associations (
	association_id VARCHAR(36) NOT NULL,
	source_type VARCHAR(36) NOT NULL,
	source_id VARCHAR(36) NOT NULL,
	destination_type VARCHAR(36) NOT NULL,
	destination_id VARCHAR(36) NOT NULL,
	created_time BIGINT,
	CONSTRAINT entity_associations_pk PRIMARY KEY (source_type, source_id, destination_type, destination_id)
);

CREATE INDEX index_entity_associations_association_id ON entity_associations (association_id);

CREATE INDEX index_entity_associations_reverse_lookup ON entity_associations (destination_type, destination_id, source_type, source_id);

CREATE TABLE experiment_tags (
	key VARCHAR(250) NOT NULL,
	value TEXT,
	experiment_id INTEGER NOT NULL,
	CONSTRAINT experiment_tag_pk PRIMARY KEY (key, experiment_id),
	CONSTRAINT fk_experiment_tags_experiment_id_experiments FOREIGN KEY(experiment_id) REFERENCES experiments (experiment_id) ON DELETE CASCADE
);

CREATE INDEX index_experiment_tags_experiment_id ON experiment_tags (experiment_id);

CREATE TABLE experiments (
	experiment_id SERIAL NOT NULL,
	name VARCHAR(500) NOT NULL,
	artifact_location VARCHAR(256),
	lifecycle_stage VARCHAR(32) DEFAULT 'active'::character varying,
	creation_time BIGINT,
	last_update_time BIGINT,
	workspace VARCHAR(63) DEFAULT 'default'::character varying NOT NULL,
	CONSTRAINT ck_experiments_lifecycle_stage CHECK (lifecycle_stage::text = ANY (ARRAY['active'::character varying, 'deleted'::character varying]::text[])),
	CONSTRAINT experiment_pk PRIMARY KEY (experiment_id),
	CONSTRAINT uq_experiments_workspace_name UNIQUE NULLS DISTINCT (workspace, name)
);

CREATE TABLE jobs (
	id VARCHAR(36) NOT NULL,
	creation_time BIGINT NOT NULL,
	job_name VARCHAR(500) NOT NULL,
	params TEXT NOT NULL,
	timeout DOUBLE PRECISION,
	status INTEGER NOT NULL,
	result TEXT,
	retry_count INTEGER DEFAULT 0 NOT NULL,
	last_update_time BIGINT NOT NULL,
	lease_expires_at BIGINT,
	next_attempt_at BIGINT,
	workspace VARCHAR(63) DEFAULT 'default'::character varying NOT NULL,
	creator VARCHAR(255),
	executor_backend VARCHAR(255),
	status_message TEXT,
	status_details JSON,
	progress JSON,
	progress_updated_at BIGINT,
	scoped_permissions JSON,
	token_hash VARCHAR(64),
	CONSTRAINT jobs_pk PRIMARY KEY (id)
);

CREATE INDEX index_jobs_claim_order ON jobs (status, next_attempt_at, creation_time, id);

CREATE INDEX index_jobs_creation_time_id ON jobs (creation_time, id);

CREATE INDEX index_jobs_name_status_creation_time ON jobs (job_name, workspace, status, creation_time);

CREATE INDEX index_jobs_status_lease_expires_at ON jobs (status, lease_expires_at);

CREATE TABLE latest_metrics (
	key VARCHAR(250) NOT NULL,
	value DOUBLE PRECISION NOT NULL,
	timestamp BIGINT,
	step BIGINT DEFAULT 0 NOT NULL,
	is_nan BOOLEAN DEFAULT false NOT NULL,
	run_uuid VARCHAR(32) NOT NULL,
	CONSTRAINT fk_latest_metrics_run_uuid_runs FOREIGN KEY(run_uuid) REFERENCES runs (run_uuid) ON DELETE CASCADE,
	CONSTRAINT latest_metric_pk PRIMARY KEY (key, run_uuid)
);

CREATE INDEX index_latest_metrics_key_value ON latest_metrics (key, value);

CREATE INDEX index_latest_metrics_run_uuid ON latest_metrics (run_uuid);

CREATE TABLE metrics (
	key VARCHAR(250) NOT NULL,
	value DOUBLE PRECISION NOT NULL,
	timestamp BIGINT NOT NULL,
	step BIGINT DEFAULT 0 NOT NULL,
	is_nan BOOLEAN DEFAULT false NOT NULL,
	run_uuid VARCHAR(32) NOT NULL,
	CONSTRAINT fk_metrics_run_uuid_runs FOREIGN KEY(run_uuid) REFERENCES runs (run_uuid) ON DELETE CASCADE,
	CONSTRAINT metric_pk PRIMARY KEY (key, timestamp, step, run_uuid, value, is_nan)
);

CREATE INDEX index_metrics_run_uuid_key_step_timestamp ON metrics (run_uuid, key, step, timestamp);

CREATE TABLE params (
	key VARCHAR(250) NOT NULL,
	value VARCHAR(8000) NOT NULL,
	run_uuid VARCHAR(32) NOT NULL,
	CONSTRAINT fk_params_run_uuid_runs FOREIGN KEY(run_uuid) REFERENCES runs (run_uuid) ON DELETE CASCADE,
	CONSTRAINT param_pk PRIMARY KEY (key, run_uuid)
);

CREATE INDEX index_params_run_uuid ON params (run_uuid);

CREATE TABLE runs (
	run_uuid VARCHAR(32) NOT NULL,
	name VARCHAR(250),
	source_type VARCHAR(20) DEFAULT 'LOCAL'::character varying,
	source_name VARCHAR(500),
	entry_point_name VARCHAR(50),
	user_id VARCHAR(256),
	status VARCHAR(9) DEFAULT 'RUNNING'::character varying,
	start_time BIGINT,
	end_time BIGINT,
	deleted_time BIGINT,
	source_version VARCHAR(50),
	lifecycle_stage VARCHAR(20) DEFAULT 'active'::character varying,
	artifact_uri VARCHAR(200),
	experiment_id INTEGER,
	CONSTRAINT ck_runs_lifecycle_stage CHECK (lifecycle_stage::text = ANY (ARRAY['active'::character varying, 'deleted'::character varying]::text[])),
	CONSTRAINT ck_runs_source_type CHECK (source_type::text = ANY (ARRAY['NOTEBOOK'::character varying, 'JOB'::character varying, 'LOCAL'::character varying, 'UNKNOWN'::character varying, 'PROJECT'::character varying]::text[])),
	CONSTRAINT ck_runs_status CHECK (status::text = ANY (ARRAY['SCHEDULED'::character varying, 'FAILED'::character varying, 'FINISHED'::character varying, 'RUNNING'::character varying, 'KILLED'::character varying]::text[])),
	CONSTRAINT fk_runs_experiment_id_experiments FOREIGN KEY(experiment_id) REFERENCES experiments (experiment_id) ON DELETE CASCADE,
	CONSTRAINT run_pk PRIMARY KEY (run_uuid)
);

CREATE INDEX index_runs_experiment_id_lifecycle_stage_start_time ON runs (experiment_id, lifecycle_stage, start_time);

CREATE TABLE spans (
	trace_id VARCHAR(50) NOT NULL,
	experiment_id INTEGER NOT NULL,
	span_id VARCHAR(50) NOT NULL,
	parent_span_id VARCHAR(50),
	name TEXT,
	type VARCHAR(500),
	status VARCHAR(50) NOT NULL,
	start_time_unix_nano BIGINT NOT NULL,
	end_time_unix_nano BIGINT,
	duration_ns BIGINT GENERATED ALWAYS AS ((end_time_unix_nano - start_time_unix_nano)) STORED,
	content TEXT NOT NULL,
	input_cost DOUBLE PRECISION,
	output_cost DOUBLE PRECISION,
	total_cost DOUBLE PRECISION,
	model_name VARCHAR(500),
	model_provider VARCHAR(500),
	CONSTRAINT fk_spans_experiment_id_experiments FOREIGN KEY(experiment_id) REFERENCES experiments (experiment_id) ON DELETE CASCADE,
	CONSTRAINT fk_spans_trace_id_trace_info FOREIGN KEY(trace_id) REFERENCES trace_info (request_id) ON DELETE CASCADE,
	CONSTRAINT spans_pk PRIMARY KEY (trace_id, span_id)
);

CREATE INDEX index_spans_experiment_id_duration ON spans (experiment_id, duration_ns);

CREATE INDEX index_spans_experiment_id_start_time ON spans (experiment_id, start_time_unix_nano);

CREATE INDEX index_spans_experiment_id_status_type ON spans (experiment_id, status, type);

CREATE INDEX index_spans_experiment_id_type_status ON spans (experiment_id, type, status);

CREATE TABLE tags (
	key VARCHAR(250) NOT NULL,
	value VARCHAR(8000),
	run_uuid VARCHAR(32) NOT NULL,
	CONSTRAINT fk_tags_run_uuid_runs FOREIGN KEY(run_uuid) REFERENCES runs (run_uuid) ON DELETE CASCADE,
	CONSTRAINT tag_pk PRIMARY KEY (key, run_uuid)
);

CREATE INDEX index_tags_run_uuid ON tags (run_uuid);

CREATE TABLE trace_info (
	request_id VARCHAR(50) NOT NULL,
	experiment_id INTEGER NOT NULL,
	timestamp_ms BIGINT NOT NULL,
	execution_time_ms BIGINT,
	status VARCHAR(50) NOT NULL,
	client_request_id VARCHAR(50),
	request_preview VARCHAR(1000),
	response_preview VARCHAR(1000),
	db_payload_generation INTEGER DEFAULT 0 NOT NULL,
	trace_name VARCHAR(4096),
	session_id VARCHAR(250),
	input_tokens BIGINT,
	output_tokens BIGINT,
	total_tokens BIGINT,
	cache_read_input_tokens BIGINT,
	cache_creation_input_tokens BIGINT,
	cache_creation_input_tokens_above_1hr BIGINT,
	input_cost DOUBLE PRECISION,
	output_cost DOUBLE PRECISION,
	total_cost DOUBLE PRECISION,
	CONSTRAINT fk_trace_info_experiment_id_experiments FOREIGN KEY(experiment_id) REFERENCES experiments (experiment_id) ON DELETE CASCADE,
	CONSTRAINT trace_info_pk PRIMARY KEY (request_id)
);

CREATE INDEX index_trace_info_client_request_id ON trace_info (client_request_id);

CREATE INDEX index_trace_info_experiment_id_session_id ON trace_info (experiment_id, session_id);

CREATE INDEX index_trace_info_experiment_id_timestamp_ms ON trace_info (experiment_id, timestamp_ms);

CREATE TABLE trace_metrics (
	key VARCHAR(250) NOT NULL,
	value DOUBLE PRECISION,
	request_id VARCHAR(50) NOT NULL,
	CONSTRAINT fk_trace_metrics_request_id_trace_info FOREIGN KEY(request_id) REFERENCES trace_info (request_id) ON DELETE CASCADE,
	CONSTRAINT trace_metrics_pk PRIMARY KEY (request_id, key)
);

CREATE INDEX index_trace_metrics_request_id ON trace_metrics (request_id);

CREATE TABLE trace_request_metadata (
	key VARCHAR(250) NOT NULL,
	value VARCHAR(8000),
	request_id VARCHAR(50) NOT NULL,
	CONSTRAINT fk_trace_request_metadata_request_id_trace_info FOREIGN KEY(request_id) REFERENCES trace_info (request_id) ON DELETE CASCADE,
	CONSTRAINT trace_request_metadata_pk PRIMARY KEY (key, request_id)
);

CREATE INDEX index_trace_request_metadata_request_id ON trace_request_metadata (request_id);

CREATE TABLE trace_tags (
	key VARCHAR(250) NOT NULL,
	value VARCHAR(8000),
	request_id VARCHAR(50) NOT NULL,
	CONSTRAINT fk_trace_tags_request_id_trace_info FOREIGN KEY(request_id) REFERENCES trace_info (request_id) ON DELETE CASCADE,
	CONSTRAINT trace_tag_pk PRIMARY KEY (key, request_id)
);

CREATE INDEX index_trace_tags_request_id ON trace_tags (request_id);
