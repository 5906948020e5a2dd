"""Frozen dataclasses and enums handed to callers.

Repositories return these, never ORM rows, so nothing lazy crosses an await.
"""

from __future__ import annotations

import dataclasses  # noqa: F401  (used by the sections below)
import enum  # noqa: F401

from asyncstore.paging import Page

# --- experiments and runs ------------------------------------------------------------

# --- traces and spans ----------------------------------------------------------------

# --- jobs ----------------------------------------------------------------------------

__all__ = sorted(
    name
    for name, value in list(globals().items())
    if isinstance(value, type) and value.__module__ == __name__
) + ["Page"]
