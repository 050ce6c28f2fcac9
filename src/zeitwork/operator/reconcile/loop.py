"""The reconcile loop: wakes on change topics (``releases``, ``routes``) and on a timer,
takes the leader lock and runs each reconciler's pass in order (nodes, reschedule,
releases). A reconciler may ask for an earlier wake-up (the planner's ``Wait.until``).

A database outage (ServiceUnavailable) is logged and retried on the next tick; any other
error stops the loop, and with it the operator (its TaskGroup), loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from zeitwork.core.errors import ServiceUnavailable
from zeitwork.operator.db import changes
from zeitwork.operator.reconcile.leader import LeaderLock
from zeitwork.operator.services.watch import Watcher

log = structlog.get_logger("zeitwork.operator.reconcile")

WAKE_TOPICS = (changes.RELEASES, changes.ROUTES)
MIN_SLEEP = 0.05


@dataclass(frozen=True, slots=True)
class Reconciler:
    """One named pass; returns the epoch second it wants to run again by (or None)."""

    name: str
    sweep: Callable[[], Awaitable[float | None]]


class ReconcileLoop:
    def __init__(
        self,
        *,
        leader: LeaderLock,
        watcher: Watcher,
        reconcilers: list[Reconciler],
        interval: float = 1.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._leader = leader
        self._watcher = watcher
        self._reconcilers = reconcilers
        self.interval = interval
        self._wall = wall
        self.passes = 0

    async def run_once(self) -> float | None:
        """One pass under the leader lock; the earliest wake-up asked for (epoch s)."""
        wake: float | None = None
        async with self._leader.hold() as leader:
            if not leader:
                return None
            for reconciler in self._reconcilers:
                asked = await reconciler.sweep()
                if asked is not None:
                    wake = asked if wake is None else min(wake, asked)
        self.passes += 1
        return wake

    async def run(self, stop: asyncio.Event) -> None:
        version: int | None = None
        while not stop.is_set():
            wake: float | None = None
            try:
                wake = await self.run_once()
            except ServiceUnavailable as exc:
                log.warning("reconcile.database_unavailable", error=exc.detail)
            sleep = self.interval
            if wake is not None:
                sleep = max(MIN_SLEEP, min(sleep, wake - self._wall()))
            try:
                version = await self._watcher.wait_change(WAKE_TOPICS, version, sleep)
            except ServiceUnavailable:
                version = None
                await _sleep_or_stop(stop, sleep)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
