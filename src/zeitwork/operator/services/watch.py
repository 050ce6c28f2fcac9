"""Long-polls: wait until a watch topic's version differs from the one a client knows.

``wait_change`` answers at once when the version already differs (or none is known), else
when a NOTIFY for the topic arrives (``ChangeListener``), when the periodic re-read sees a
change (the guarantee when a NOTIFY is lost), when the operator starts draining, or when
``wait`` seconds have passed; never later than ``wait`` plus one database round trip.
"""

from __future__ import annotations

import asyncio
import contextlib

from zeitwork.operator.db import changes
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.listener import ChangeListener

MAX_WAIT_SECONDS = 60.0


class Watcher:
    def __init__(
        self,
        *,
        db: Database,
        listener: ChangeListener,
        stopping: asyncio.Event,
        recheck_seconds: float = 2.0,
    ) -> None:
        self._db = db
        self._listener = listener
        self._stopping = stopping
        self._recheck = recheck_seconds

    async def version(self, topic: str | tuple[str, ...]) -> int:
        async with self._db.connection() as conn:
            if isinstance(topic, str):
                return await changes.version(conn, topic)
            return await changes.versions_sum(conn, topic)

    async def wait_change(
        self, topic: str | tuple[str, ...], known: int | None, wait: float
    ) -> int:
        """The topic's current version, once it differs from ``known`` or time is up.

        With several topics the version is the sum of theirs (it changes when any does)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT_SECONDS)
        topics = (topic,) if isinstance(topic, str) else topic
        while True:
            # register before the read: no change slips by
            woken = [self._listener.event(t) for t in topics]
            current = await self.version(topic)
            remaining = deadline - loop.time()
            if known is None or current != known or remaining <= 0 or self._stopping.is_set():
                return current
            waits = [asyncio.ensure_future(self._stopping.wait())]
            waits += [asyncio.ensure_future(event.wait()) for event in woken]
            try:
                await asyncio.wait(
                    waits,
                    timeout=min(remaining, self._recheck),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for task in waits:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
