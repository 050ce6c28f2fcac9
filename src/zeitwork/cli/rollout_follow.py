"""Following a release's rollout until it is over: its events as they happen, and the
release and the app's status polled beside them (the only source when the event stream
is unavailable). ``rollout_watch`` decides what to print and when it is over."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from zeitwork.cli.rollout_watch import RolloutWatch, WatchOutcome, concerns, outcome_of
from zeitwork.clients.admin import AdminClient
from zeitwork.core.errors import ZeitworkError
from zeitwork.wire.releases import ReleaseOut

POLL_INTERVAL = 1.0
"""Seconds between polls of the release and the status (sooner after a rollout event)."""

_STREAM_ATTEMPTS = 3
_BACKLOG = 200
_TERMINAL_KINDS = ("rollout.succeeded", "rollout.failed", "rollout.superseded", "release.")


async def follow_rollout(
    client: AdminClient,
    project: str,
    release: ReleaseOut,
    *,
    say: Callable[[str], None],
    started: float | None = None,
) -> tuple[WatchOutcome, ReleaseOut]:
    """Print the rollout's progress until the release is current, failed or superseded;
    returns how it ended and the release as it ended."""
    origin = time.monotonic() if started is None else started
    watch = RolloutWatch(release_versions={release.id: release.version})
    wake = asyncio.Event()

    def elapsed() -> float:
        return time.monotonic() - origin

    async def stream() -> None:
        # the environment's events (an instance's own reports carry its release but not the
        # rollout), the newest few first: those from before the release are left out
        filters = {"project": str(release.project_id), "environment": release.environment}
        try:
            async for event in client.follow_events(
                filters=filters, backlog=_BACKLOG, max_failures=_STREAM_ATTEMPTS
            ):
                if not concerns(event, release):
                    continue
                for line in watch.on_event(event, elapsed()):
                    say(line)
                if event.kind.startswith(_TERMINAL_KINDS):
                    wake.set()
        except ZeitworkError as exc:
            say(f"{elapsed():6.1f}s  (events unavailable, polling: {exc.detail})")

    async def check() -> tuple[WatchOutcome, ReleaseOut] | None:
        current = await client.release(project, release.version, environment=release.environment)
        status = await client.status(project, environment=release.environment)
        for line in watch.on_status(status, elapsed()):
            say(line)
        outcome = outcome_of(current)
        return None if outcome is None else (outcome, current)

    # a first look before the events: what serves now, with each instance's version
    if (over := await check()) is not None:
        return over
    events = asyncio.create_task(stream(), name="rollout-events")
    try:
        while True:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), POLL_INTERVAL)
            if (over := await check()) is not None:
                return over
    finally:
        events.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await events
