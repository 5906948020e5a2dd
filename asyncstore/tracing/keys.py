"""The trace tags and request metadata MLflow's store writes itself, with their values.

Read from MLflow 3.17's ``SqlAlchemyStore`` (``mlflow/store/tracking/sqlalchemy_store.py``):

* ``log_spans`` creates a missing trace with the tag ``mlflow.artifactLocation``
  (:func:`trace_artifact_location`) and, on every call, sets
  ``mlflow.trace.spansLocation`` to ``TRACKING_STORE``: without that tag MLflow's
  ``get_trace`` looks for the spans in the artifact store ("Trace data not stored in
  tracking store").
* ``start_trace`` adds the same ``mlflow.artifactLocation`` tag and the request
  metadata ``mlflow.trace.infoFinalized`` = ``"true"`` to what it was given.

MLflow's ``get_trace`` returns these tags and metadata like any other, and so does
asyncstore. (``mlflow.trace_schema.version`` is not among them: MLflow's tracing
client puts it in the metadata it passes to ``start_trace``; the store adds nothing.)
"""

from __future__ import annotations

ARTIFACT_LOCATION = "mlflow.artifactLocation"
SPANS_LOCATION = "mlflow.trace.spansLocation"
TRACKING_STORE = "TRACKING_STORE"
"""The value of :data:`SPANS_LOCATION` for spans kept in the ``spans`` table."""
INFO_FINALIZED = "mlflow.trace.infoFinalized"


def trace_artifact_location(experiment_artifact_location: str, trace_id: str) -> str:
    """``<experiment artifact location>/traces/<trace id>/artifacts``, as MLflow builds it."""
    return f"{experiment_artifact_location.rstrip('/')}/traces/{trace_id}/artifacts"
