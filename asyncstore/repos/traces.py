"""The traces repository (to be built)."""

from __future__ import annotations

from asyncstore.uow import UnitOfWork


class TraceRepository:
    """Async repository for traces."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
