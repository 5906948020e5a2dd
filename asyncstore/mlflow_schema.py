"""What asyncstore knows of databases that MLflow manages.

MLflow migrates its own schema with Alembic, in the same ``alembic_version`` table
asyncstore uses for its own: a database whose revision is not asyncstore's and that
holds MLflow's model-registry tables is an MLflow database. asyncstore never
migrates it; it serves it when every table and column that asyncstore's statements
use is there (:func:`missing_columns`, by reflection), which is true of the MLflow
releases in :data:`SUPPORTED`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from asyncstore.schema import metadata

MARKER_TABLES = frozenset({"registered_models", "model_versions"})
"""Tables every MLflow database has had since MLflow 1.x, and asyncstore never has."""

SUPPORTED = "3.17"
"""The MLflow releases whose databases asyncstore serves, for messages and the README."""

RELEASES: Mapping[str, str] = {
    "dc11669786a5": "MLflow 3.17",
}
"""Alembic heads of MLflow releases -> the releases whose head they are."""


def is_mlflow(tables: Collection[str]) -> bool:
    """Whether a database holding ``tables`` is one that MLflow created."""
    return MARKER_TABLES <= set(tables)


def release_of(revision: str) -> str:
    """The MLflow releases whose head ``revision`` is, or a phrase saying it is not known."""
    return RELEASES.get(revision, "not the head of an MLflow release asyncstore knows")


def missing_columns(columns: Mapping[str, Collection[str]]) -> list[str]:
    """``table.column`` names asyncstore uses that a database lacks (``columns``: its
    tables and their column names, as reflected)."""
    missing = []
    for table in metadata.sorted_tables:
        have = columns.get(table.name)
        if have is None:
            missing.append(f"{table.name} (table)")
            continue
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in have]
    return missing
