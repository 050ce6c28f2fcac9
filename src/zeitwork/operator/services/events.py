"""Reading the event history: filters resolved from what users name, pages, following
(woken by the ``events`` change topic, re-checked periodically), and bounded retention.

A follower reads ``seq > cursor`` in order and moves its cursor to the last ``seq`` it
handed out, so a client resuming with that ``seq`` (``Last-Event-ID``) gets every later event
once. A row becomes visible when its transaction commits, and ``seq`` values are drawn before
commit: a follower therefore never steps its cursor over a gap younger than
``GAP_GRACE_SECONDS`` (a transaction still running may yet fill it); older gaps are rolled
back transactions and are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import structlog

from zeitwork.core.errors import InvalidInput, ServiceUnavailable
from zeitwork.operator.db.app_refs import AppRefs
from zeitwork.operator.db.events import EVENTS, Event, EventFilter, EventStore
from zeitwork.operator.services.watch import Watcher

log = structlog.get_logger("zeitwork.operator.events")

KIND_PREFIX = re.compile(r"^[a-z][a-z0-9_.]{0,99}$")
_VERSION = re.compile(r"^v?([1-9][0-9]{0,9})$")
FOLLOW_BATCH = 200
GAP_GRACE_SECONDS = 2.0


def parse_version(text: str) -> int:
    """``v3`` or ``3`` -> 3; anything else is InvalidInput."""
    match = _VERSION.match(text.strip().lower())
    if match is None or int(match.group(1)) > 2_147_483_647:
        raise InvalidInput(f"release must be a version such as v3, got {text[:40]!r}")
    return int(match.group(1))


def contiguous_prefix(events: Sequence[Event], cursor: int) -> list[Event]:
    """The events up to the first gap in ``seq`` after ``cursor`` (pure)."""
    taken: list[Event] = []
    expected = cursor + 1
    for event in events:
        if event.seq != expected:
            break
        taken.append(event)
        expected += 1
    return taken


@dataclass(frozen=True, slots=True)
class EventQuery:
    """A request's filters as users name them (``project`` an id or a slug)."""

    project: str | None = None
    environment: str | None = None
    release: str | None = None
    rollout_id: uuid.UUID | None = None
    instance_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = None
    kind: str | None = None


class EventFeed:
    def __init__(
        self,
        *,
        store: EventStore,
        refs: AppRefs,
        watcher: Watcher,
        stopping: asyncio.Event,
        recheck_seconds: float = 5.0,
    ) -> None:
        self._store = store
        self._refs = refs
        self._watcher = watcher
        self._stopping = stopping
        self._recheck = recheck_seconds

    async def resolve(self, query: EventQuery) -> EventFilter:
        """The store's filter; NotFound for an unknown app, environment or release."""
        if query.kind is not None and not KIND_PREFIX.match(query.kind):
            raise InvalidInput("kind must be a dotted lower-case name or its prefix (release.)")
        if (query.environment or query.release) and not query.project:
            raise InvalidInput("environment and release need project")
        version = parse_version(query.release) if query.release else None
        project_id: uuid.UUID | None = None
        env_id: uuid.UUID | None = None
        release_id: uuid.UUID | None = None
        if query.project:
            app = await self._refs.project(query.project)
            project_id = app.id
            if query.environment or query.release:
                env_id = await self._refs.environment(app.id, query.environment or "production")
                if version is not None:
                    release_id = await self._refs.release(env_id, version)
        return EventFilter(
            project_id=project_id,
            project_environment_id=env_id,
            release_id=release_id,
            rollout_id=query.rollout_id,
            instance_id=query.instance_id,
            node_id=query.node_id,
            kind_prefix=query.kind,
        )

    async def page(self, where: EventFilter, *, after: int, limit: int) -> list[Event]:
        return await self._store.after(after, where=where, limit=limit)

    async def start_of_newest(self, where: EventFilter, newest: int) -> int:
        return await self._refs.events_start(where, newest)

    async def follow(
        self, where: EventFilter, *, after: int, keepalive: float
    ) -> AsyncIterator[list[Event]]:
        """Batches of new events in ``seq`` order, for ever; an empty batch every
        ``keepalive`` seconds of silence (the caller writes a keep-alive)."""
        cursor = after
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        gap_seen_at: float | None = None
        while not self._stopping.is_set():
            version = await self._watcher.version(EVENTS)
            # unfiltered, so that gaps in seq are visible; filtering happens below
            rows = await self._store.after(cursor, limit=FOLLOW_BATCH)
            ready = contiguous_prefix(rows, cursor)
            if len(ready) < len(rows) and not ready:
                # a gap right after the cursor: wait for it to fill, skip it once old
                now = loop.time()
                gap_seen_at = gap_seen_at if gap_seen_at is not None else now
                if now - gap_seen_at >= GAP_GRACE_SECONDS:
                    ready = list(rows)
                    gap_seen_at = None
            else:
                gap_seen_at = None
            if ready:
                cursor = ready[-1].seq
                matching = [event for event in ready if _matches(event, where)]
                if matching:
                    last_sent = loop.time()
                    yield matching
                if len(rows) == FOLLOW_BATCH or len(ready) < len(rows):
                    continue  # more is waiting
            if loop.time() - last_sent >= keepalive:
                last_sent = loop.time()
                yield []
            wait = min(self._recheck, keepalive)
            if gap_seen_at is not None:
                wait = min(wait, 0.2)
            await self._watcher.wait_change(EVENTS, version, wait)


def _matches(event: Event, where: EventFilter) -> bool:
    """The same test as ``EventStore.after``'s WHERE clause (pure)."""
    checks = (
        (where.project_id, event.project_id),
        (where.project_environment_id, event.project_environment_id),
        (where.release_id, event.release_id),
        (where.rollout_id, event.rollout_id),
        (where.instance_id, event.instance_id),
        (where.node_id, event.node_id),
    )
    if any(wanted is not None and wanted != value for wanted, value in checks):
        return False
    return where.kind_prefix is None or event.kind.startswith(where.kind_prefix)


class EventPruner:
    """Retention: deletes events older than ``max_age`` seconds and beyond the newest
    ``max_count``, every ``interval`` seconds (a named task of the operator)."""

    def __init__(
        self, *, store: EventStore, max_age: float, max_count: int, interval: float = 60.0
    ) -> None:
        self._store = store
        self._max_age = max_age
        self._max_count = max_count
        self._interval = interval

    async def prune_once(self) -> int:
        removed = await self._store.prune(max_age_seconds=self._max_age, max_count=self._max_count)
        if removed:
            log.info("events.pruned", removed=removed)
        return removed

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.prune_once()
            except ServiceUnavailable as exc:  # the next round retries
                log.warning("events.prune_unavailable", error=exc.detail)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self._interval)
