"""OpenTelemetry spans to asyncstore spans: the public import path.

The conversion lives in :mod:`asyncstore.tracing.otel`; this module keeps
``from asyncstore.otel import from_otlp_request`` working.
"""

from asyncstore.tracing.otel import from_otlp_request, from_readable_span, from_readable_spans, span_type_of

__all__ = ["from_otlp_request", "from_readable_span", "from_readable_spans", "span_type_of"]
