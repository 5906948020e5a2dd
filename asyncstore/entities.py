"""Frozen dataclasses and enums handed to callers.

Repositories return these, never ORM rows, so nothing lazy crosses an await.
"""

from __future__ import annotations

import dataclasses  # noqa: F401  (used by the sections below)
import enum  # noqa: F401
from collections.abc import Mapping  # noqa: F401
from typing import Any  # noqa: F401

from asyncstore.paging import Page

# --- experiments and runs ------------------------------------------------------------

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
    ========= === ==========================================================
    """

    PENDING = 0
    RUNNING = 1
    SUCCEEDED = 2
    FAILED = 3
    TIMEOUT = 4
    CANCELED = 5

    def __str__(self) -> str:
        return self.name

    @property
    def is_terminal(self) -> bool:
        """Whether the job is done for good (no transition leaves it except ``reset``)."""
        return self not in (JobStatus.PENDING, JobStatus.RUNNING)


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
            a retry's backoff).
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
    next_attempt_at: int


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
    """

    requeued: int
    timed_out: int

__all__ = sorted(
    name
    for name, value in list(globals().items())
    if isinstance(value, type) and value.__module__ == __name__
) + ["Page"]
