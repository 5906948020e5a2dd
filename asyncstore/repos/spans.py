"""The spans repository (to be built)."""

from __future__ import annotations

from asyncstore.uow import UnitOfWork


class SpanRepository:
    """Async repository for spans."""

    def __init__(self, uow: UnitOfWork) -> None:
        self._uow = uow
