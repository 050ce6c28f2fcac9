"""``GET /api/v1/projects/{project}/logs``: an app's output from every instance, labelled and
merged (``{project}`` is the app's id or slug).

Query: ``environment`` (default ``production``, or every instance for an app made before
environments), ``release`` (``v3``), ``instance`` (an id),
``since`` (``10m`` or an RFC 3339 time: only lines written at or after it),
``until`` (the same shapes: only lines written at or before it; not with ``follow``),
``tail`` (lines of history per instance, default 100, counted before ``since``/``until``
cut), ``follow`` (keep streaming through restarts and rollouts), ``format`` ``ndjson``
(default) or ``sse``.

Each record is one JSON object, an NDJSON line or an SSE ``data:`` line:
``{"ts": "<RFC 3339>", "instance_id": ..., "node_id": ..., "release": "v3", "stream":
"stdout", "line": "...", "partial": false}``, or a notice ``{"notice": "node X: unreachable,
retrying"}``. ``ts`` is when the instance wrote the line (its node agent records it; for a
line kept before agents did, when the operator read it); ``stream`` is ``stdout`` or
``stderr``; ``partial`` says the line goes on in the next one (a line longer than 16 KiB, or
one left unfinished for half a second). Followed SSE lines carry an ``id:``; a reconnection
with ``Last-Event-ID`` skips the history it already had.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response

from zeitwork.clients.agent import MAX_TAIL
from zeitwork.core.errors import InvalidInput, NotFound
from zeitwork.operator.api.security import require
from zeitwork.operator.api.streaming import (
    KEEPALIVE_SECONDS,
    NDJSON_MEDIA_TYPE,
    SSE_MEDIA_TYPE,
    StreamBody,
    ndjson_line,
    sse_comment,
    sse_event,
    sse_retry,
)
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.operator.services.events import parse_version
from zeitwork.operator.services.logs import LabelledLine, LogScope, Record, parse_since

Format = Literal["ndjson", "sse"]
RETRY_MILLISECONDS = 1000


class _Ids:
    """SSE ids of followed lines: their time in microseconds, strictly growing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self, record: Record) -> str | None:
        if not isinstance(record, LabelledLine):
            return None
        self._last = max(self._last + 1, int(record.ts.timestamp() * 1_000_000))
        return str(self._last)


def _encode(records: Sequence[Record], fmt: Format, ids: _Ids | None = None) -> bytes:
    if fmt == "ndjson":
        return b"".join(ndjson_line(r.to_json()) for r in records)
    return b"".join(sse_event(r.to_json(), event_id=ids.next(r) if ids else None) for r in records)


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/projects", tags=["logs"])
    admin = require(deps, Scope.ADMIN)

    @api.get("/{project}/logs", dependencies=[Depends(admin)])
    async def app_logs(
        project: str,
        *,
        environment: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")] = None,
        release: Annotated[str | None, Query(max_length=20, description="v3")] = None,
        instance: uuid.UUID | None = None,
        since: Annotated[str | None, Query(max_length=40, description="10m or RFC 3339")] = None,
        until: Annotated[str | None, Query(max_length=40, description="10m or RFC 3339")] = None,
        tail: Annotated[int, Query(ge=0, le=MAX_TAIL)] = 100,
        follow: bool = False,
        format: Annotated[Format, Query()] = "ndjson",
        last_event_id: Annotated[str | None, Header(max_length=40)] = None,
    ) -> Response:
        version = parse_version(release) if release is not None else None
        now = deps.clock.now()
        start = parse_since(since, now=now) if since is not None else None
        end = parse_since(until, now=now, what="until") if until is not None else None
        if end is not None and follow:
            raise InvalidInput("until reads history: it cannot be used with follow")
        if start is not None and end is not None and end < start:
            raise InvalidInput("until is before since: no line can be in between")
        app = await deps.app_refs.project(project)
        env_id: uuid.UUID | None = None
        if environment is not None or version is not None:
            env_id = await deps.app_refs.environment(app.id, environment or "production")
        else:  # production by default; an app made before environments has none
            with contextlib.suppress(NotFound):
                env_id = await deps.app_refs.environment(app.id, "production")
        if version is not None and env_id is not None:
            await deps.app_refs.release(env_id, version)
        if instance is not None:
            await deps.app_refs.instance_of(app.id, instance)
        scope = LogScope(
            project_id=app.id,
            environment_id=env_id,
            version=version,
            instance_id=instance,
            since=start,
            until=end,
        )
        media = NDJSON_MEDIA_TYPE if format == "ndjson" else SSE_MEDIA_TYPE
        if not follow:
            records = await deps.log_fan_in.history(scope, tail=tail)
            return Response(content=_encode(records, format), media_type=media)
        resuming = bool(last_event_id and last_event_id.strip())
        return StreamBody(
            _follow(deps, scope, tail=0 if resuming else tail, fmt=format),
            media_type=media,
            stopping=deps.stopping,
            what="logs",
        )

    return api


async def _follow(deps: Deps, scope: LogScope, *, tail: int, fmt: Format) -> AsyncIterator[bytes]:
    ids = _Ids() if fmt == "sse" else None
    if fmt == "sse":
        yield sse_retry(RETRY_MILLISECONDS)
    async for batch in deps.log_fan_in.follow(scope, tail=tail, keepalive=KEEPALIVE_SECONDS):
        if batch:
            yield _encode(batch, fmt, ids)
        elif fmt == "sse":
            yield sse_comment()
        else:
            yield b"\n"  # an empty NDJSON line: a keep-alive readers skip
