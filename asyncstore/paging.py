"""``Page[T]`` and opaque page tokens.

A page token is URL-safe base64 of a small JSON object (the keyset position of the
last row returned, plus a fingerprint of the query), so callers treat it as opaque
and a token from one query is refused by another instead of giving wrong pages.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

from asyncstore.errors import InvalidParameter

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    """One page of results and the token for the next one (None on the last page)."""

    items: Sequence[T]
    next_page_token: str | None = None

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def fingerprint(*parts: Any) -> str:
    """A short digest of the query a token belongs to."""
    raw = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_token(position: dict[str, Any], query: str) -> str:
    """Make an opaque token from a keyset position and a query fingerprint."""
    raw = json.dumps({"q": query, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, query: str) -> dict[str, Any]:
    """Read a token made by :func:`encode_token` for the same query.

    Raises:
        InvalidParameter: the token is malformed or belongs to another query.
    """
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if not isinstance(data, dict) or not isinstance(data.get("p"), dict):
            raise ValueError("not a page token")
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidParameter(
            f"invalid page_token {token[:40]!r}: pass the next_page_token of a previous page unchanged"
        ) from exc
    if data.get("q") != query:
        raise InvalidParameter(
            "page_token belongs to a different query; reuse a token only with the same "
            "arguments (filter, order, ids) that produced it"
        )
    return dict(data["p"])


def decode_offset(token: str | None, query: str) -> int:
    """The row offset an offset-paged search's token holds (0 without a token).

    Raises:
        InvalidParameter: the token is malformed, belongs to another query or holds no
            valid offset.
    """
    if token is None:
        return 0
    offset = decode_token(token, query).get("o")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise InvalidParameter("page_token is damaged; pass the next_page_token of a previous page unchanged")
    return offset
