"""The runs repository (to be built)."""

from __future__ import annotations

from asyncstore.uow import UnitOfWork


class RunRepository:
    """Async repository for runs."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
