"""Experiment tracking: experiments and runs, with their params, metrics and tags.

``experiments`` and ``runs`` are the repositories; ``batch`` validates a
``log_batch``, ``ingest`` writes it per dialect, ``search`` turns run search into SQL.
"""

from asyncstore.tracking.experiments import ExperimentRepository
from asyncstore.tracking.runs import RunRepository

__all__ = ["ExperimentRepository", "RunRepository"]
