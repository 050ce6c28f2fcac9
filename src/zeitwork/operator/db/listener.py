"""One ``LISTEN zeitwork_changes`` connection per operator process, shared by every
long-poll waiter.

A waiter takes ``event(topic)`` BEFORE it reads the topic's version, then waits on it: a
change committed after the read sets the event (``changes.bump`` sends ``NOTIFY`` with
``"<topic> <version>"``). NOTIFY only wakes early; waiters re-read the version at least
every ``recheck`` seconds, so a lost listener connection delays but never loses a change.
The listener starts lazily on the first waiter and reconnects after errors.
"""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import structlog

from zeitwork.operator.db.changes import CHANNEL

log = structlog.get_logger("zeitwork.operator.listener")

_RECONNECT_SECONDS = 1.0


class ChangeListener:
    def __init__(self, *, conninfo: str) -> None:
        self._conninfo = conninfo
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = asyncio.Event()

    def event(self, topic: str) -> asyncio.Event:
        """The event set at the next change of ``topic`` (shared by all its waiters)."""
        self._ensure_started()
        found = self._events.get(topic)
        if found is None:
            found = self._events[topic] = asyncio.Event()
        return found

    def _ensure_started(self) -> None:
        if self._closed:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="change-listener")

    def _wake(self, topic: str) -> None:
        found = self._events.pop(topic, None)
        if found is not None:
            found.set()

    def _wake_all(self) -> None:
        events, self._events = self._events, {}
        for found in events.values():
            found.set()

    async def _run(self) -> None:
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except psycopg.Error as exc:
                log.warning("listener.connect_failed", error=type(exc).__name__)
                await asyncio.sleep(_RECONNECT_SECONDS)
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    # anything committed while we were not listening: let waiters re-read
                    self._wake_all()
                    async for note in conn.notifies():
                        self._wake(note.payload.partition(" ")[0])
            except psycopg.Error as exc:
                log.warning("listener.lost", error=type(exc).__name__)
            finally:
                self.connected.clear()
            if not self._closed:
                await asyncio.sleep(_RECONNECT_SECONDS)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake_all()
