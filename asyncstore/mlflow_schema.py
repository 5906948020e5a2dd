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

from sqlalchemy import Index

from asyncstore.schema import metadata

MARKER_TABLES = frozenset({"registered_models", "model_versions"})
"""Tables every MLflow database has had since MLflow 1.x, and asyncstore never has."""

SUPPORTED = "3.17 and later 3.x releases (tested: 3.17.0, 3.17.2)"
"""The MLflow releases whose databases asyncstore serves, for messages and the README:
from the first whose schema has every column asyncstore uses (3.17.0, whose head added
the jobs' leases and attempts) on."""

RELEASES: Mapping[str, str] = {
    "6953534de441": "MLflow 3.0.0, 3.1.0",
    "bda7b8c39065": "MLflow 3.0.1, 3.1.x",
    "770bee3ae1dd": "MLflow 3.2",
    "1a0cddfcaa16": "MLflow 3.3",
    "71994744cf8e": "MLflow 3.4",
    "bf29a5ff90ea": "MLflow 3.5 to 3.7",
    "1bd49d398cd23": "MLflow 3.8",
    "d3e4f5a6b7c8": "MLflow 3.9",
    "1b5f0d9ad7c1": "MLflow 3.10",
    "c3d6457b6d8a": "MLflow 3.11",
    "7d34483879f0": "MLflow 3.12",
    "da6fb0208061": "MLflow 3.13",
    "b7e4c1a90f23": "MLflow 3.14",
    "6f8d9c3b2a1e": "MLflow 3.15",
    "b7e2c1a4d9f3": "MLflow 3.16",
    "dc11669786a5": "MLflow 3.17",
    "f4a9b2c7d1e6": "MLflow 3.18",
}
"""Alembic heads of MLflow 3.x releases -> the releases whose head they are (names
only: whether a database is served is decided by its columns, never by this table)."""


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


INDEX_PREFIX = "asyncstore_"
"""Names of the indexes asyncstore adds to an MLflow database, on request
(``asyncstore db upgrade --indexes``): ``asyncstore_`` + the name the index has in
asyncstore's own schema, a name no MLflow index has."""


def absent_indexes(indexes: Mapping[str, Collection[str]]) -> list[Index]:
    """asyncstore's indexes that a database lacks under both its own name and its
    :data:`INDEX_PREFIX` name (``indexes``: its tables and their index names)."""
    absent = []
    for table in metadata.sorted_tables:
        have = indexes.get(table.name, ())
        absent += [
            ix for ix in sorted(table.indexes, key=lambda ix: str(ix.name))
            if ix.name not in have and INDEX_PREFIX + str(ix.name) not in have
        ]
    return absent


def added_indexes(indexes: Mapping[str, Collection[str]]) -> list[tuple[str, str]]:
    """(table, index) of the :data:`INDEX_PREFIX` indexes a database has."""
    return [
        (table, name)
        for table in sorted(indexes)
        for name in sorted(indexes[table])
        if name.startswith(INDEX_PREFIX)
    ]
