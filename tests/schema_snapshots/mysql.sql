-- revision 0006_mysql_spans_row_id; regenerate with: python -m tests.schema_snapshots --update

CREATE TABLE `alembic_version` (
  `version_num` varchar(32) NOT NULL,
  PRIMARY KEY (`version_num`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE `entity_associations` (
  `association_id` varchar(36) NOT NULL,
  `source_type` varchar(36) NOT NULL,
  `source_id` varchar(36) NOT NULL,
  `destination_type` varchar(36) NOT NULL,
  `destination_id` varchar(36) NOT NULL,
  `created_time` bigint(20) DEFAULT NULL,
  PRIMARY KEY (`source_type`,`source_id`,`destination_type`,`destination_id`),
  KEY `index_entity_associations_association_id` (`association_id`),
  KEY `index_entity_associations_reverse_lookup` (`destination_type`,`destination_id`,`source_type`,`source_id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `experiment_tags` (
  `key` varchar(250) NOT NULL,
  `value` text DEFAULT NULL,
  `experiment_id` int(11) NOT NULL,
  PRIMARY KEY (`key`,`experiment_id`),
  KEY `index_experiment_tags_experiment_id` (`experiment_id`),
  CONSTRAINT `fk_experiment_tags_experiment_id_experiments` FOREIGN KEY (`experiment_id`) REFERENCES `experiments` (`experiment_id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `experiments` (
  `experiment_id` int(11) NOT NULL AUTO_INCREMENT,
  `name` varchar(500) NOT NULL,
  `artifact_location` varchar(256) DEFAULT NULL,
  `lifecycle_stage` varchar(32) DEFAULT 'active',
  `creation_time` bigint(20) DEFAULT NULL,
  `last_update_time` bigint(20) DEFAULT NULL,
  `workspace` varchar(63) NOT NULL DEFAULT 'default',
  PRIMARY KEY (`experiment_id`),
  UNIQUE KEY `uq_experiments_workspace_name` (`workspace`,`name`),
  CONSTRAINT `ck_experiments_lifecycle_stage` CHECK (`lifecycle_stage` in ('active','deleted'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `jobs` (
  `id` varchar(36) NOT NULL,
  `creation_time` bigint(20) NOT NULL,
  `job_name` varchar(500) NOT NULL,
  `params` text NOT NULL,
  `timeout` double DEFAULT NULL,
  `status` int(11) NOT NULL,
  `result` text DEFAULT NULL,
  `retry_count` int(11) NOT NULL DEFAULT 0,
  `last_update_time` bigint(20) NOT NULL,
  `lease_expires_at` bigint(20) DEFAULT NULL,
  `next_attempt_at` bigint(20) DEFAULT NULL,
  `workspace` varchar(63) NOT NULL DEFAULT 'default',
  `creator` varchar(255) DEFAULT NULL,
  `executor_backend` varchar(255) DEFAULT NULL,
  `status_message` text DEFAULT NULL,
  `status_details` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(`status_details`)),
  `progress` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(`progress`)),
  `progress_updated_at` bigint(20) DEFAULT NULL,
  `scoped_permissions` longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(`scoped_permissions`)),
  `token_hash` varchar(64) DEFAULT NULL,
  PRIMARY KEY (`id`),
  KEY `index_jobs_creation_time_id` (`creation_time`,`id`),
  KEY `index_jobs_status_lease_expires_at` (`status`,`lease_expires_at`),
  KEY `index_jobs_name_status_creation_time` (`job_name`,`workspace`,`status`,`creation_time`),
  KEY `index_jobs_claim_order` (`status`,`next_attempt_at`,`creation_time`,`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `latest_metrics` (
  `key` varchar(250) NOT NULL,
  `value` double NOT NULL,
  `timestamp` bigint(20) DEFAULT NULL,
  `step` bigint(20) NOT NULL DEFAULT 0,
  `is_nan` tinyint(1) NOT NULL DEFAULT 0,
  `run_uuid` varchar(32) NOT NULL,
  PRIMARY KEY (`key`,`run_uuid`),
  KEY `index_latest_metrics_key_value` (`key`,`value`),
  KEY `index_latest_metrics_run_uuid` (`run_uuid`),
  CONSTRAINT `fk_latest_metrics_run_uuid_runs` FOREIGN KEY (`run_uuid`) REFERENCES `runs` (`run_uuid`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `metrics` (
  `key` varchar(250) NOT NULL,
  `value` double NOT NULL,
  `timestamp` bigint(20) NOT NULL,
  `step` bigint(20) NOT NULL DEFAULT 0,
  `is_nan` tinyint(1) NOT NULL DEFAULT 0,
  `run_uuid` varchar(32) NOT NULL,
  PRIMARY KEY (`key`,`timestamp`,`step`,`run_uuid`,`value`,`is_nan`),
  KEY `index_metrics_run_uuid_key_step_timestamp` (`run_uuid`,`key`,`step`,`timestamp`),
  CONSTRAINT `fk_metrics_run_uuid_runs` FOREIGN KEY (`run_uuid`) REFERENCES `runs` (`run_uuid`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `params` (
  `key` varchar(250) NOT NULL,
  `value` varchar(8000) NOT NULL,
  `run_uuid` varchar(32) NOT NULL,
  PRIMARY KEY (`key`,`run_uuid`),
  KEY `index_params_run_uuid` (`run_uuid`),
  CONSTRAINT `fk_params_run_uuid_runs` FOREIGN KEY (`run_uuid`) REFERENCES `runs` (`run_uuid`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `runs` (
  `run_uuid` varchar(32) NOT NULL,
  `name` varchar(250) DEFAULT NULL,
  `source_type` varchar(20) DEFAULT 'LOCAL',
  `source_name` varchar(500) DEFAULT NULL,
  `entry_point_name` varchar(50) DEFAULT NULL,
  `user_id` varchar(256) DEFAULT NULL,
  `status` varchar(9) DEFAULT 'RUNNING',
  `start_time` bigint(20) DEFAULT NULL,
  `end_time` bigint(20) DEFAULT NULL,
  `deleted_time` bigint(20) DEFAULT NULL,
  `source_version` varchar(50) DEFAULT NULL,
  `lifecycle_stage` varchar(20) DEFAULT 'active',
  `artifact_uri` varchar(200) DEFAULT NULL,
  `experiment_id` int(11) DEFAULT NULL,
  PRIMARY KEY (`run_uuid`),
  KEY `index_runs_experiment_id_lifecycle_stage_start_time` (`experiment_id`,`lifecycle_stage`,`start_time`),
  CONSTRAINT `fk_runs_experiment_id_experiments` FOREIGN KEY (`experiment_id`) REFERENCES `experiments` (`experiment_id`) ON DELETE CASCADE,
  CONSTRAINT `ck_runs_lifecycle_stage` CHECK (`lifecycle_stage` in ('active','deleted')),
  CONSTRAINT `ck_runs_source_type` CHECK (`source_type` in ('NOTEBOOK','JOB','LOCAL','UNKNOWN','PROJECT')),
  CONSTRAINT `ck_runs_status` CHECK (`status` in ('SCHEDULED','FAILED','FINISHED','RUNNING','KILLED'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `spans` (
  `asyncstore_row_id` bigint(20) NOT NULL INVISIBLE AUTO_INCREMENT,
  `trace_id` varchar(50) NOT NULL,
  `experiment_id` int(11) NOT NULL,
  `span_id` varchar(50) NOT NULL,
  `parent_span_id` varchar(50) DEFAULT NULL,
  `name` text DEFAULT NULL,
  `type` varchar(500) DEFAULT NULL,
  `status` varchar(50) NOT NULL,
  `start_time_unix_nano` bigint(20) NOT NULL,
  `end_time_unix_nano` bigint(20) DEFAULT NULL,
  `duration_ns` bigint(20) GENERATED ALWAYS AS (`end_time_unix_nano` - `start_time_unix_nano`) STORED,
  `content` longtext NOT NULL,
  `input_cost` double DEFAULT NULL,
  `output_cost` double DEFAULT NULL,
  `total_cost` double DEFAULT NULL,
  `model_name` varchar(500) DEFAULT NULL,
  `model_provider` varchar(500) DEFAULT NULL,
  PRIMARY KEY (`asyncstore_row_id`),
  UNIQUE KEY `spans_pk` (`trace_id`,`span_id`),
  KEY `index_spans_experiment_id_duration` (`experiment_id`,`duration_ns`),
  KEY `index_spans_experiment_id_start_time` (`experiment_id`,`start_time_unix_nano`),
  KEY `index_spans_experiment_id_status_type` (`experiment_id`,`status`,`type`),
  KEY `index_spans_experiment_id_type_status` (`experiment_id`,`type`,`status`),
  CONSTRAINT `fk_spans_experiment_id_experiments` FOREIGN KEY (`experiment_id`) REFERENCES `experiments` (`experiment_id`) ON DELETE CASCADE,
  CONSTRAINT `fk_spans_trace_id_trace_info` FOREIGN KEY (`trace_id`) REFERENCES `trace_info` (`request_id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `tags` (
  `key` varchar(250) NOT NULL,
  `value` varchar(8000) DEFAULT NULL,
  `run_uuid` varchar(32) NOT NULL,
  PRIMARY KEY (`key`,`run_uuid`),
  KEY `index_tags_run_uuid` (`run_uuid`),
  CONSTRAINT `fk_tags_run_uuid_runs` FOREIGN KEY (`run_uuid`) REFERENCES `runs` (`run_uuid`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `trace_info` (
  `request_id` varchar(50) NOT NULL,
  `experiment_id` int(11) NOT NULL,
  `timestamp_ms` bigint(20) NOT NULL,
  `execution_time_ms` bigint(20) DEFAULT NULL,
  `status` varchar(50) NOT NULL,
  `client_request_id` varchar(50) DEFAULT NULL,
  `request_preview` varchar(1000) DEFAULT NULL,
  `response_preview` varchar(1000) DEFAULT NULL,
  `db_payload_generation` int(11) NOT NULL DEFAULT 0,
  `trace_name` varchar(4096) DEFAULT NULL,
  `session_id` varchar(250) DEFAULT NULL,
  `input_tokens` bigint(20) DEFAULT NULL,
  `output_tokens` bigint(20) DEFAULT NULL,
  `total_tokens` bigint(20) DEFAULT NULL,
  `cache_read_input_tokens` bigint(20) DEFAULT NULL,
  `cache_creation_input_tokens` bigint(20) DEFAULT NULL,
  `cache_creation_input_tokens_above_1hr` bigint(20) DEFAULT NULL,
  `input_cost` double DEFAULT NULL,
  `output_cost` double DEFAULT NULL,
  `total_cost` double DEFAULT NULL,
  PRIMARY KEY (`request_id`),
  KEY `index_trace_info_client_request_id` (`client_request_id`),
  KEY `index_trace_info_experiment_id_timestamp_ms` (`experiment_id`,`timestamp_ms`),
  KEY `index_trace_info_experiment_id_session_id` (`experiment_id`,`session_id`),
  CONSTRAINT `fk_trace_info_experiment_id_experiments` FOREIGN KEY (`experiment_id`) REFERENCES `experiments` (`experiment_id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `trace_metrics` (
  `key` varchar(250) NOT NULL,
  `value` double DEFAULT NULL,
  `request_id` varchar(50) NOT NULL,
  PRIMARY KEY (`request_id`,`key`),
  KEY `index_trace_metrics_request_id` (`request_id`),
  CONSTRAINT `fk_trace_metrics_request_id_trace_info` FOREIGN KEY (`request_id`) REFERENCES `trace_info` (`request_id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `trace_request_metadata` (
  `key` varchar(250) NOT NULL,
  `value` varchar(8000) DEFAULT NULL,
  `request_id` varchar(50) NOT NULL,
  PRIMARY KEY (`key`,`request_id`),
  KEY `index_trace_request_metadata_request_id` (`request_id`),
  CONSTRAINT `fk_trace_request_metadata_request_id_trace_info` FOREIGN KEY (`request_id`) REFERENCES `trace_info` (`request_id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE `trace_tags` (
  `key` varchar(250) NOT NULL,
  `value` varchar(8000) DEFAULT NULL,
  `request_id` varchar(50) NOT NULL,
  PRIMARY KEY (`key`,`request_id`),
  KEY `index_trace_tags_request_id` (`request_id`),
  CONSTRAINT `fk_trace_tags_request_id_trace_info` FOREIGN KEY (`request_id`) REFERENCES `trace_info` (`request_id`) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
