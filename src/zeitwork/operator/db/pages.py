"""Keyset pagination shared by every list endpoint: ordered by ``id``, cursor = last id.

A store fetches ``limit + 1`` rows ``WHERE id > after ORDER BY id`` (see ``PAGE_SQL``) and
returns ``page_of(rows, request)``; the API turns ``Page.next_after`` into a
``Link: <...>; rel="next"`` header (``zeitwork.operator.api.pagination``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

# Append to a query that already has a WHERE clause; parameters ``after`` and ``fetch``.
PAGE_SQL = " AND (%(after)s::uuid IS NULL OR id > %(after)s::uuid) ORDER BY id LIMIT %(fetch)s"


class _HasId(Protocol):
    @property
    def id(self) -> uuid.UUID: ...


T = TypeVar("T", bound=_HasId)


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int = DEFAULT_LIMIT
    after: uuid.UUID | None = None

    def params(self) -> dict[str, object]:
        """The ``after`` and ``fetch`` parameters for ``PAGE_SQL``."""
        return {"after": self.after, "fetch": self.limit + 1}


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_after: uuid.UUID | None


def page_of(rows: Sequence[T], request: PageRequest) -> Page[T]:
    """Cut the extra row off; it only says that there is a next page."""
    items = list(rows[: request.limit])
    more = len(rows) > request.limit
    return Page(items=items, next_after=items[-1].id if more and items else None)
