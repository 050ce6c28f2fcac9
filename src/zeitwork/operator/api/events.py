"""``GET /api/v1/events``: what the platform did and saw, paged or followed.

- Paged: a JSON list of ``EventOut`` in ``seq`` order after ``after`` (default 0), at most
  ``limit``; a full page carries ``Link: <...after=LAST>; rel="next"``.
- ``follow=true``: Server-Sent Events, one per event (``id:`` its ``seq``, ``data:`` the
  ``EventOut`` JSON), for ever, with a ``: keepalive`` comment every 15 s of silence. It
  starts after ``Last-Event-ID`` when the client sends one (a reconnection: nothing twice,
  nothing missed), else after ``after``, else with the newest ``limit`` matching events.

Filters: ``project`` (id or slug), ``environment`` (a name; with a project), ``release``
(``v3``; with a project, in ``environment`` or ``production``), ``rollout_id``, ``instance``,
``node``, ``kind`` (a dotted name or its prefix: ``instance.`` or ``release.created``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from pydantic import TypeAdapter

from zeitwork.core.errors import InvalidInput
from zeitwork.operator.api.security import require
from zeitwork.operator.api.streaming import (
    KEEPALIVE_SECONDS,
    SSE_MEDIA_TYPE,
    StreamBody,
    sse_comment,
    sse_event,
    sse_retry,
)
from zeitwork.operator.db.events import Event, EventFilter
from zeitwork.operator.db.pages import MAX_LIMIT
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.operator.services.events import EventQuery
from zeitwork.wire.releases import EventOut

_EVENT_LIST = TypeAdapter(list[EventOut])
RETRY_MILLISECONDS = 1000


def event_out(event: Event) -> EventOut:
    return EventOut.model_construct(
        seq=event.seq,
        id=event.id,
        created_at=event.created_at,
        project_id=event.project_id,
        project_environment_id=event.project_environment_id,
        release_id=event.release_id,
        rollout_id=event.rollout_id,
        instance_id=event.instance_id,
        node_id=event.node_id,
        kind=event.kind,
        level=event.level,
        message=event.message,
        data=event.data,
    )


def _resume_point(last_event_id: str | None) -> int | None:
    if last_event_id is None or not last_event_id.strip():
        return None
    text = last_event_id.strip()
    if not text.isdigit() or len(text) > 18:
        raise InvalidInput("Last-Event-ID must be the seq of an event (a number)")
    return int(text)


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/events", tags=["events"])
    admin = require(deps, Scope.ADMIN)

    @api.get("", dependencies=[Depends(admin)], response_model=list[EventOut])
    async def list_events(
        request: Request,
        *,
        project: Annotated[str | None, Query(max_length=200, description="id or slug")] = None,
        environment: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = None,
        release: Annotated[str | None, Query(max_length=20, description="v3")] = None,
        rollout_id: uuid.UUID | None = None,
        instance: uuid.UUID | None = None,
        node: uuid.UUID | None = None,
        kind: Annotated[str | None, Query(max_length=100)] = None,
        after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        follow: bool = False,
        last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    ) -> Response:
        query = EventQuery(
            project=project,
            environment=environment,
            release=release,
            rollout_id=rollout_id,
            instance_id=instance,
            node_id=node,
            kind=kind,
        )
        where = await deps.event_feed.resolve(query)
        if not follow:
            events = await deps.event_feed.page(where, after=after or 0, limit=limit)
            answer = Response(
                content=_EVENT_LIST.dump_json([event_out(e) for e in events]),
                media_type="application/json",
            )
            if len(events) == limit:
                url = request.url.include_query_params(after=str(events[-1].seq))
                answer.headers["Link"] = f'<{url}>; rel="next"'
            return answer
        resume = _resume_point(last_event_id)
        if resume is None:
            resume = after
        if resume is None:
            resume = await deps.event_feed.start_of_newest(where, limit)
        return StreamBody(
            _sse(deps, where, resume),
            media_type=SSE_MEDIA_TYPE,
            stopping=deps.stopping,
            what="events",
        )

    return api


async def _sse(deps: Deps, where: EventFilter, after: int) -> AsyncIterator[bytes]:
    yield sse_retry(RETRY_MILLISECONDS)
    async for batch in deps.event_feed.follow(where, after=after, keepalive=KEEPALIVE_SECONDS):
        if not batch:
            yield sse_comment()
            continue
        yield b"".join(
            sse_event(event_out(e).model_dump_json(), event_id=str(e.seq)) for e in batch
        )
