"""Input checks and the retry policy of the job queue.

Every check runs before anything is written and raises
:class:`~asyncstore.errors.InvalidParameter` saying what was wrong and what is
allowed. The retry policy reads ``ASYNCSTORE_JOB_*`` variables when it is asked for
(at call time, never at import), keyword arguments first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from collections.abc import Iterable, Mapping
from typing import Any

from asyncstore.config import JOB_BACKOFF_BASE, JOB_BACKOFF_CAP, JOB_BACKOFF_JITTER, JOB_MAX_RETRIES
from asyncstore.entities import JobStatus
from asyncstore.errors import InvalidParameter
from asyncstore.rules import as_double
from asyncstore.schema import JOB_NAME_MAX

JOB_ID_MAX = 36
"""``jobs.id`` is VARCHAR(36): a UUID string."""
TEXT_MAX_BYTES = 65_535
"""``params`` and ``result`` are TEXT, which holds 65,535 bytes on MySQL/MariaDB:
the same limit is enforced on every backend so a job that fits one fits all."""
MAX_CLAIM = 1000
"""At most this many jobs per claim: one claim is one short transaction."""
MAX_PAGE_SIZE = 10_000
DEFAULT_LEASE_SECONDS = 60.0
"""A claimed job's lease unless the caller gives one: long enough for a heartbeat
every 20 s to keep it with margin, short enough that a dead worker's job is back
within a minute."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often a job is retried and how long each retry waits.

    Attributes:
        max_retries: retries allowed before ``retry_or_fail`` marks the job FAILED.
        backoff_base: seconds the first retry waits.
        backoff_cap: the longest wait in seconds.
        backoff_jitter: the share of each wait drawn at random (0 to 1), so that jobs
            that failed together (a database outage, a dead worker) do not all come
            back at the same instant.
    """

    max_retries: int
    backoff_base: float
    backoff_cap: float
    backoff_jitter: float = 0.0

    def backoff_ms(self, retry_count: int) -> int:
        """Milliseconds before a job retried ``retry_count`` times already may run again.

        The full wait is ``min(cap, base * 2 ** retry_count)``: base, 2 base, 4 base …
        up to cap; the wait returned lies uniformly between ``(1 - jitter)`` times it
        and all of it ("equal jitter" at 0.5, none at 0).
        """
        seconds = min(self.backoff_cap, self.backoff_base * 2.0 ** min(retry_count, 60))
        if self.backoff_jitter:
            seconds *= 1.0 - self.backoff_jitter * random.random()
        return int(seconds * 1000)


def retry_policy(
    max_retries: int | None = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
    backoff_jitter: float | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> RetryPolicy:
    """Resolve the retry policy: keyword, else environment variable, else default.

    The settings, their ``ASYNCSTORE_JOB_*`` variables and defaults are
    :data:`asyncstore.config.JOB_SETTINGS` (defaults: 3 retries, MLflow's; 1 s first
    wait; no wait longer than five minutes; half of each wait at random).

    Raises:
        ConfigurationError: a bad keyword or variable value, naming it.
    """
    env = os.environ if environ is None else environ
    return RetryPolicy(
        max_retries=JOB_MAX_RETRIES.pick(max_retries, env),
        backoff_base=JOB_BACKOFF_BASE.pick(backoff_base, env),
        backoff_cap=JOB_BACKOFF_CAP.pick(backoff_cap, env),
        backoff_jitter=JOB_BACKOFF_JITTER.pick(backoff_jitter, env),
    )


def job_id(value: Any) -> str:
    """Check a job id: a non-empty string of at most 36 characters."""
    if not isinstance(value, str) or not value or len(value) > JOB_ID_MAX:
        raise InvalidParameter(
            f"job_id {value!r} is not valid: expected a UUID string of at most {JOB_ID_MAX} characters"
        )
    return value


def job_name(value: Any, label: str = "job_name") -> str:
    """Check a job name: a non-blank string of at most 500 characters."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameter(f"{label} {value!r} is not valid: expected a non-blank string")
    if len(value) > JOB_NAME_MAX:
        raise InvalidParameter(
            f"{label} is {len(value)} characters long; the limit is {JOB_NAME_MAX}"
        )
    return value


def job_names(value: Any) -> list[str] | None:
    """Check the ``job_names`` of a claim: None (any name) or a non-empty list of names."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidParameter(
            f"job_names {value!r} is not valid: expected a list of job names (e.g. [{value!r}]) or None"
        )
    names = [job_name(name, "a name in job_names") for name in value]
    if not names:
        raise InvalidParameter("job_names is empty: give at least one job name, or None for any")
    return sorted(set(names))


def params_text(value: Any) -> str:
    """Serialise job params to JSON text: a dict with string keys, JSON values, <= 64 KiB."""
    if not isinstance(value, Mapping):
        raise InvalidParameter(f"params must be a dict of JSON-serialisable values, not {type(value).__name__}")
    bad_keys = [key for key in value if not isinstance(key, str)]
    if bad_keys:
        raise InvalidParameter(f"params keys must be strings; got {bad_keys[0]!r}")
    try:
        text = json.dumps(dict(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidParameter(
            f"params are not JSON-serialisable ({exc}); use strings, numbers (not NaN or "
            "infinity), booleans, None, lists and dicts"
        ) from exc
    size = len(text.encode("utf-8"))
    if size > TEXT_MAX_BYTES:
        raise InvalidParameter(f"params are {size} bytes as JSON; the limit is {TEXT_MAX_BYTES}")
    return text


def params_filter(value: Any) -> dict[str, Any] | None:
    """Check a ``list`` params filter: None or a dict with string keys and JSON values."""
    if value is None:
        return None
    params_text(value)
    return dict(value)


def text(label: str, value: Any) -> str:
    """Check a result or error text: a string of at most 65,535 UTF-8 bytes."""
    if not isinstance(value, str):
        raise InvalidParameter(f"{label} must be a string, not {type(value).__name__}")
    size = len(value.encode("utf-8"))
    if size > TEXT_MAX_BYTES:
        raise InvalidParameter(f"{label} is {size} bytes; the limit is {TEXT_MAX_BYTES}")
    return value


def timeout(value: Any) -> float | None:
    """Check a job timeout: None (no limit) or a finite number of seconds > 0."""
    if value is None:
        return None
    seconds = as_double(value)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidParameter(f"timeout {value!r} is not valid: expected None or a finite number of seconds > 0")
    return seconds


def seconds_ms(label: str, value: Any) -> int:
    """Check a duration in seconds (> 0, finite, at most a year) and return milliseconds."""
    year = 366 * 24 * 3600.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= year:
        raise InvalidParameter(f"{label} {value!r} is not valid: expected a number of seconds > 0 and <= {year:.0f}")
    return max(1, int(value * 1000))


def token(value: Any) -> int | None:
    """Check a lease token: None, or the whole number a claim returned (``Job.lease_token``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameter(
            f"lease token {value!r} is not valid: expected the Job.lease_token of the claim (a whole number) or None"
        )
    return value


def bounded_int(label: str, value: Any, low: int, high: int) -> int:
    """Check a whole number between ``low`` and ``high``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameter(f"{label} {value!r} is not valid: expected a whole number from {low} to {high}")
    return value


def timestamp(label: str, value: Any) -> int | None:
    """Check an optional epoch-millisecond bound."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParameter(f"{label} {value!r} is not valid: expected epoch milliseconds (a whole number >= 0)")
    return value


def statuses(value: Any) -> list[JobStatus] | None:
    """Check a status filter: None or JobStatus members (or their names)."""
    if value is None:
        return None
    if isinstance(value, (str, JobStatus)) or not isinstance(value, Iterable):
        value = [value]
    allowed = ", ".join(s.name for s in JobStatus)
    found: list[JobStatus] = []
    for item in value:
        if isinstance(item, JobStatus):
            found.append(item)
        elif isinstance(item, str) and item.upper() in JobStatus.__members__:
            found.append(JobStatus[item.upper()])
        else:
            raise InvalidParameter(f"status {item!r} is not valid: expected one of {allowed}")
    if not found:
        raise InvalidParameter(f"statuses is empty: give at least one of {allowed}, or None for all")
    return sorted(set(found))
