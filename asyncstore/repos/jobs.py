"""The jobs repository (to be built)."""

from __future__ import annotations

from asyncstore.uow import UnitOfWork


class JobRepository:
    """Async repository for jobs."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
