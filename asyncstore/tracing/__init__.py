"""Tracing: traces and their spans.

``traces`` and ``spans`` are the repositories; ``rows`` validates spans and encodes
their rows, ``ingest`` writes a batch per dialect, ``search`` and ``delete`` serve
trace search and retention, ``otel`` converts OpenTelemetry spans.
"""

from asyncstore.tracing.spans import SpanRepository
from asyncstore.tracing.traces import TraceRepository

__all__ = ["SpanRepository", "TraceRepository"]
