"""The experiments repository (to be built)."""

from __future__ import annotations

from asyncstore.uow import UnitOfWork


class ExperimentRepository:
    """Async repository for experiments."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
