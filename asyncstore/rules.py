"""Validation rules shared by the repositories.

Ids, keys, values and limits (MLflow's rules), and the storage encoding of NaN / ±inf
metric values. The SQL that differs per dialect lives in :mod:`asyncstore.dialect`.
"""

from __future__ import annotations

import math
import posixpath
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from asyncstore.errors import InvalidParameter
from asyncstore.schema import KEY_MAX

MAX_RESULTS_LIMIT = 50_000
"""Largest page a search returns (MLflow's limit for search_runs)."""

DEFAULT_ARTIFACT_ROOT = "mlflow-artifacts:"
"""Experiments created without an artifact location get ``mlflow-artifacts:/<id>``,
the location an MLflow tracking server that serves artifacts uses."""

FLOAT_MAX = 1.7976931348623157e308
"""±inf is stored as ±FLOAT_MAX (MySQL's DOUBLE cannot hold infinities; MLflow does
the same) and read back as ±inf."""

EXPERIMENT_ID_MAX = 2**31 - 1
"""Largest experiment id: ``experiments.experiment_id`` is an INTEGER column (32-bit
signed on PostgreSQL and MySQL, as in MLflow's schema)."""

_RUN_ID = re.compile(r"^[a-zA-Z0-9][\w\-]{0,31}$")
_EXPERIMENT_ID = re.compile(r"[0-9]{1,10}")
# MLflow's rule for metric, param and tag keys: alphanumerics, _ - . space / :
_KEY = re.compile(r"^[/\w.\- :]*$")


def now_ms() -> int:
    """The current time in epoch milliseconds."""
    return int(time.time() * 1000)


def invalid(message: str) -> NoReturn:
    """Raise :class:`InvalidParameter` with ``message``."""
    raise InvalidParameter(message)


def experiment_id_of(value: object) -> int:
    """Validate an experiment id and return it as int.

    MLflow passes experiment ids as strings of digits; an int is accepted too. Either
    must fit the ``experiment_id`` column: 0 to :data:`EXPERIMENT_ID_MAX`.

    Raises:
        InvalidParameter: anything else (a bool, a negative number, other characters).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (
        isinstance(value, str) and _EXPERIMENT_ID.fullmatch(value) is None
    ) or not 0 <= int(value) <= EXPERIMENT_ID_MAX:
        invalid(
            f"experiment_id {value!r} is not valid: expected a string of digits such as '1' "
            f"(a whole number from 0 to {EXPERIMENT_ID_MAX})"
        )
    return int(value)


def run_id_of(value: object) -> str:
    """Validate a run id (MLflow: 32 hex characters; up to 32 word characters accepted)."""
    if not isinstance(value, str) or not _RUN_ID.match(value):
        invalid(f"run id {value!r} is not valid: expected 32 hexadecimal characters")
    return value


def check_key(kind: str, key: object) -> str:
    """Validate a metric, param or tag key with MLflow's rules."""
    if not isinstance(key, str) or key == "":
        invalid(f"{kind} key {key!r} is not valid: expected a non-empty string")
    if len(key) > KEY_MAX:
        invalid(f"{kind} key {key[:40]!r}... is {len(key)} characters long; the limit is {KEY_MAX}")
    if not _KEY.match(key):
        invalid(
            f"{kind} key {key!r} is not valid: keys may contain only letters, digits, "
            "underscores (_), dashes (-), periods (.), spaces ( ), colons (:) and slashes (/)"
        )
    norm = posixpath.normpath(key)
    if norm != key or norm == "." or norm.startswith(("..", "/")):
        invalid(f"{kind} key {key!r} is not valid: it must be a relative path without '..', '//' or a trailing '/'")
    return key


def check_value(kind: str, key: str, value: object, limit: int) -> str:
    """Validate a param or tag value (a string; numbers and bools are turned into strings)."""
    if isinstance(value, (bool, int, float)):
        value = str(value)
    if not isinstance(value, str):
        invalid(f"{kind} {key!r} has a value of type {type(value).__name__}; expected a string")
    if len(value) > limit:
        invalid(f"{kind} {key!r} has a value {len(value)} characters long; the limit is {limit}")
    return value


def check_string(name: str, value: object, limit: int, *, allow_none: bool = True) -> str | None:
    """Validate an optional string argument against a length limit."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        invalid(f"{name} must be a string, got {type(value).__name__}")
    if len(value) > limit:
        invalid(f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


def check_int(name: str, value: object, *, allow_none: bool = False) -> int | None:
    """Validate an integer argument (epoch ms, step...); bools are refused."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        invalid(f"{name} must be an integer, got {value!r}")
    if not -(2**63) <= value < 2**63:
        invalid(f"{name} {value} does not fit in a 64-bit integer")
    return value


def check_max_results(value: object, *, limit: int = MAX_RESULTS_LIMIT) -> int:
    """Validate ``max_results`` (1 .. limit)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        invalid(f"max_results must be an integer between 1 and {limit}, got {value!r}")
    return value


def tag_pairs(kind: str, tags: Mapping[str, str] | Iterable[Any] | None, limit: int) -> dict[str, str]:
    """Validate tags given as a mapping or as objects with ``key``/``value``."""
    if tags is None:
        return {}
    items: Iterable[tuple[Any, Any]]
    if isinstance(tags, Mapping):
        items = tags.items()
    else:
        items = [(getattr(t, "key", None), getattr(t, "value", None)) for t in tags]
    result: dict[str, str] = {}
    for key, value in items:
        key = check_key(kind, key)
        result[key] = check_value(kind, key, value, limit)
    return result


# --- metric values ------------------------------------------------------------------


def as_double(value: object) -> float | None:
    """``value`` as a double; None when it is not a number (a bool, a string) or is an
    integer beyond every double (``float()`` of it raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def encode_metric(value: object, key: str) -> tuple[float, bool]:
    """Return the stored (value, is_nan) of a metric value (MLflow's encoding)."""
    number = as_double(value)
    if number is None:
        if isinstance(value, int) and not isinstance(value, bool):
            invalid(
                f"metric {key!r} has an integer value of {value.bit_length()} bits, too large for a "
                "double; metric values are doubles (finite ones at most about ±1.8e308)"
            )
        invalid(f"metric {key!r} has value {value!r}; expected a number")
    if math.isnan(number):
        return 0.0, True
    if math.isinf(number):
        return (FLOAT_MAX if number > 0 else -FLOAT_MAX), False
    if abs(number) == FLOAT_MAX:
        # ±FLOAT_MAX is how ±inf is stored: accepting it would read back as ±inf.
        invalid(
            f"metric {key!r} has value {value!r}, the largest double, which this store "
            "reserves for ±inf; log float('inf') / float('-inf') or a smaller number"
        )
    return number, False


def decode_metric(value: float, is_nan: bool) -> float:
    """Inverse of :func:`encode_metric`."""
    if is_nan:
        return math.nan
    if value >= FLOAT_MAX:
        return math.inf
    if value <= -FLOAT_MAX:
        return -math.inf
    return float(value)
