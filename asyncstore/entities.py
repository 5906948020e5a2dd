"""Frozen dataclasses and enums handed to callers.

Repositories return these, never ORM rows, so nothing lazy crosses an await.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from asyncstore.paging import Page

# --- experiments and runs ------------------------------------------------------------


class LifecycleStage(str, enum.Enum):
    """Whether an experiment or run is live or (soft-)deleted."""

    ACTIVE = "active"
    DELETED = "deleted"


class ViewType(str, enum.Enum):
    """Which lifecycle stages a search returns."""

    ACTIVE_ONLY = "ACTIVE_ONLY"
    DELETED_ONLY = "DELETED_ONLY"
    ALL = "ALL"


class RunStatus(str, enum.Enum):
    """The status of a run (MLflow's RunStatus)."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


@dataclasses.dataclass(frozen=True)
class ExperimentTag:
    """A key/value tag of an experiment."""

    key: str
    value: str


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiment: a named group of runs. Times are epoch milliseconds."""

    experiment_id: str
    name: str
    artifact_location: str | None
    lifecycle_stage: LifecycleStage
    creation_time: int | None
    last_update_time: int | None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric measurement. ``timestamp`` is epoch ms; ``value`` may be NaN or ±inf."""

    key: str
    value: float
    timestamp: int
    step: int = 0


@dataclasses.dataclass(frozen=True)
class RunMetric:
    """A metric measurement together with the run it belongs to (bulk history)."""

    run_id: str
    key: str
    value: float
    timestamp: int
    step: int = 0


@dataclasses.dataclass(frozen=True)
class Param:
    """A run parameter; immutable once logged."""

    key: str
    value: str


@dataclasses.dataclass(frozen=True)
class RunTag:
    """A key/value tag of a run."""

    key: str
    value: str


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """Run metadata. Times are epoch milliseconds."""

    run_id: str
    experiment_id: str
    run_name: str | None
    user_id: str | None
    status: RunStatus
    start_time: int | None
    end_time: int | None
    lifecycle_stage: LifecycleStage
    artifact_uri: str | None
    deleted_time: int | None = None


@dataclasses.dataclass(frozen=True)
class RunData:
    """What a run logged: the latest value of each metric, its params and tags.

    Attributes:
        metrics: latest value per metric key.
        params: param key -> value.
        tags: tag key -> value.
        latest_metrics: the latest measurement per key, with its step and timestamp.
    """

    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    latest_metrics: dict[str, Metric] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Run:
    """A run: its :class:`RunInfo` and :class:`RunData`."""

    info: RunInfo
    data: RunData

    @property
    def run_id(self) -> str:
        """Shortcut for ``info.run_id``."""
        return self.info.run_id


# --- traces and spans ----------------------------------------------------------------


class TraceState(str, enum.Enum):
    """The state of a trace (MLflow's TraceState; stored in ``trace_info.status``)."""

    OK = "OK"
    ERROR = "ERROR"
    IN_PROGRESS = "IN_PROGRESS"


class SpanStatus(str, enum.Enum):
    """The status code of a span (OpenTelemetry's StatusCode names)."""

    UNSET = "UNSET"
    OK = "OK"
    ERROR = "ERROR"


@dataclasses.dataclass(frozen=True)
class SpanEvent:
    """A timestamped event inside a span (an exception, a log line…).

    Attributes:
        name: the event name, e.g. ``"exception"``.
        timestamp_unix_nano: when it happened, epoch nanoseconds.
        attributes: JSON-serialisable attribute values.
    """

    name: str
    timestamp_unix_nano: int
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Span:
    """One span, as given to ``store.spans.log_spans`` and read back from the store.

    Ids follow MLflow: ``trace_id`` is ``tr-`` + 32 lowercase hex characters, span
    ids are 16 lowercase hex characters; times are epoch nanoseconds. Everything
    (attributes, events, status message, kind, resource) is stored as JSON in the
    span row's ``content`` and read back equal.

    Example::

        Span(trace_id="tr-" + "ab" * 16, span_id="cd" * 8, name="llm",
             start_time_unix_nano=1_700_000_000_000_000_000,
             end_time_unix_nano=1_700_000_000_500_000_000, span_type="LLM",
             status=SpanStatus.OK, attributes={"model": "gpt"})
    """

    trace_id: str
    span_id: str
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int | None = None
    parent_span_id: str | None = None
    span_type: str | None = None
    status: SpanStatus = SpanStatus.UNSET
    status_message: str = ""
    kind: str = "INTERNAL"
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    resource: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def duration_ns(self) -> int | None:
        """End minus start in nanoseconds; None while the span is open."""
        if self.end_time_unix_nano is None:
            return None
        return self.end_time_unix_nano - self.start_time_unix_nano


@dataclasses.dataclass(frozen=True)
class TraceInfo:
    """The summary row of one trace (``trace_info`` plus its tags, metadata, metrics).

    Attributes:
        trace_id: ``tr-`` + 32 hex characters (MLflow's ``request_id``).
        experiment_id: the experiment the trace belongs to.
        timestamp_ms: start, epoch milliseconds.
        execution_time_ms: duration in milliseconds, None if unknown.
        state: OK, ERROR or IN_PROGRESS.
        client_request_id, request_preview, response_preview: optional strings.
        tags, metadata: string maps; metrics: numeric map.
    """

    trace_id: str
    experiment_id: str
    timestamp_ms: int
    execution_time_ms: int | None
    state: TraceState
    client_request_id: str | None = None
    request_preview: str | None = None
    response_preview: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Trace:
    """A trace: its info and all its spans, each parent before its children."""

    info: TraceInfo
    spans: tuple[Span, ...]


# --- jobs ----------------------------------------------------------------------------


class JobStatus(enum.IntEnum):
    """Status of a job, stored as a fixed integer in ``jobs.status``.

    The integers are MLflow's (PENDING 0 … TIMEOUT 4, CANCELED 5) and never change:
    rows written by one version are read by every other.

    ========= === ==========================================================
    PENDING    0  waiting to be claimed (after ``next_attempt_at``)
    RUNNING    1  claimed or started by a worker
    SUCCEEDED  2  finished with a result (terminal)
    FAILED     3  failed for good (terminal)
    TIMEOUT    4  ran past its own timeout (terminal)
    CANCELED   5  canceled before it finished (terminal)
    NEEDS_RECOVERY
              6  MLflow's: its executor lost track of a RUNNING job; MLflow's
                 server re-queues it on its next start (asyncstore only reads it)
    ========= === ==========================================================
    """

    PENDING = 0
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    TIMEOUT = 4
    CANCELED = 5
    NEEDS_RECOVERY = 6

    def __str__(self) -> str:
        return self.name

    @property
    def is_terminal(self) -> bool:
        """Whether the job is done for good (no transition leaves it except ``reset``)."""
        return self not in (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.NEEDS_RECOVERY)


@dataclasses.dataclass(frozen=True)
class Job:
    """One job of the queue (a row of ``jobs``); times are epoch milliseconds.

    Attributes:
        job_id: UUID string; ids of one ``create_many`` batch sort in creation order.
        job_name: what to run (MLflow's ``function_fullname``).
        params: the job's parameters, decoded from their JSON text.
        timeout: seconds a run may take before it is TIMEOUT, or None for no limit.
        status: the current :class:`JobStatus`.
        result: the result (SUCCEEDED) or last error (FAILED, retried, TIMEOUT).
        retry_count: how many times ``retry_or_fail`` sent it back to PENDING.
        creation_time: when it was created (database clock).
        last_update_time: when its status last changed (database clock); a heartbeat
            only moves ``lease_expires_at``, so for a RUNNING job this is when it started.
        lease_expires_at: for a claimed RUNNING job, when its worker's lease runs out.
        next_attempt_at: when a PENDING job may be claimed (later than creation after
            a retry's backoff); None for a job MLflow created, claimable at once.
    """

    job_id: str
    job_name: str
    params: dict[str, Any]
    timeout: float | None
    status: JobStatus
    result: str | None
    retry_count: int
    creation_time: int
    last_update_time: int
    lease_expires_at: int | None
    next_attempt_at: int | None

    @property
    def lease_token(self) -> int | None:
        """The fencing token of a RUNNING job's current claim, None for a job in any other state.

        It is the claim's ``last_update_time``, which every claim sets greater than
        any value the job had before: give it as ``token=`` to ``heartbeat``,
        ``finish``, ``fail``, ``retry_or_fail``, ``mark_timed_out`` and ``release``,
        and they refuse (``InvalidState``) once the job has been claimed again by
        someone else.
        """
        return self.last_update_time if self.status is JobStatus.RUNNING else None


@dataclasses.dataclass(frozen=True)
class NewJob:
    """A job to enqueue with ``store.jobs.create_many``.

    Attributes:
        job_name: what to run (at most 500 characters).
        params: JSON-serialisable parameters (a dict with string keys).
        timeout: seconds a run may take, or None for no limit.
    """

    job_name: str
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    timeout: float | None = None


@dataclasses.dataclass(frozen=True)
class RequeueResult:
    """What ``store.jobs.requeue_expired`` did.

    Attributes:
        requeued: RUNNING jobs whose lease expired, returned to PENDING.
        timed_out: RUNNING jobs past their own timeout, marked TIMEOUT.
        failed: RUNNING jobs whose lease expired with no retries left, marked FAILED
            (a poison job: its worker died or hung on every attempt).
    """

    requeued: int
    timed_out: int
    failed: int = 0


@dataclasses.dataclass(frozen=True)
class FinishedJob:
    """A job that ended well, for ``store.jobs.finish_many``.

    Attributes:
        job_id: the job.
        result: its result (a string of at most 65,535 bytes).
        token: the claim's :attr:`Job.lease_token`; None finishes it under any claim.
    """

    job_id: str
    result: str
    token: int | None = None


__all__ = [
    "Experiment",
    "ExperimentTag",
    "FinishedJob",
    "Job",
    "JobStatus",
    "LifecycleStage",
    "Metric",
    "NewJob",
    "Page",
    "Param",
    "RequeueResult",
    "Run",
    "RunData",
    "RunInfo",
    "RunMetric",
    "RunStatus",
    "RunTag",
    "Span",
    "SpanEvent",
    "SpanStatus",
    "Trace",
    "TraceInfo",
    "TraceState",
    "ViewType",
]
