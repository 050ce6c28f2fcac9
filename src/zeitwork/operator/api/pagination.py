"""List endpoints: ``limit`` and ``after`` query parameters and the ``Link`` header.

In a router::

    @router.get("", response_model=list[ThingOut])
    async def list_things(page: Annotated[PageRequest, Depends(page_params)],
                          request: Request, response: Response) -> list[ThingOut]:
        result = await deps.things.list_page(page)
        set_next_link(request, response, result)
        return [ThingOut.of(t) for t in result.items]
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Query, Request, Response

from zeitwork.operator.db.pages import DEFAULT_LIMIT, MAX_LIMIT, Page, PageRequest


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description="page size (1 to 1000)")
    ] = DEFAULT_LIMIT,
    after: Annotated[
        uuid.UUID | None, Query(description="cursor: the id of the last item already seen")
    ] = None,
) -> PageRequest:
    return PageRequest(limit=limit, after=after)


def set_next_link(request: Request, response: Response, page: Page[Any]) -> None:
    """Add ``Link: <url>; rel="next"`` when there is a next page."""
    if page.next_after is None:
        return
    url = request.url.include_query_params(after=str(page.next_after))
    response.headers["Link"] = f'<{url}>; rel="next"'
