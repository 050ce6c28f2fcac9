"""The node-down detector: nodes whose heartbeats stop for the timeout go ``down``; down
nodes that heartbeat again go ``ready``; with a rescheduler, instances of nodes down for
longer than its grace period are replaced elsewhere (``services.reschedule``). Runs every
few seconds: as the reconcile loop's first reconciler (``reconcile/loop.py``, under the
leader lock), or on its own with ``run``. With ``db`` it records ``node.down`` /
``node.back`` events."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import structlog

from zeitwork.core.errors import ServiceUnavailable
from zeitwork.operator.db import events
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.nodes import NodeStore
from zeitwork.operator.services.reschedule import Rescheduler

log = structlog.get_logger("zeitwork.operator.node_watch")


class NodeWatch:
    def __init__(
        self,
        *,
        nodes: NodeStore,
        timeout_seconds: float,
        rescheduler: Rescheduler | None = None,
        db: Database | None = None,
    ) -> None:
        self._db = db
        self._nodes = nodes
        self._timeout = timeout_seconds
        self._rescheduler = rescheduler
        self.interval = max(0.5, min(5.0, timeout_seconds / 3))

    async def sweep(self) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """One pass; returns (ids marked down, ids marked ready)."""
        down = await self._nodes.mark_silent_down(self._timeout)
        for node_id in down:
            log.warning("node.down", node_id=str(node_id), timeout_seconds=self._timeout)
        ready = await self._nodes.mark_alive_ready(self._timeout)
        for node_id in ready:
            log.info("node.back", node_id=str(node_id))
        if self._db is not None and (down or ready):
            async with self._db.transaction() as tx:
                for node_id in down:
                    await events.record(
                        tx,
                        "node.down",
                        f"no heartbeat for {self._timeout:g} s",
                        level="warning",
                        node_id=node_id,
                    )
                for node_id in ready:
                    await events.record(tx, "node.back", "heartbeats resumed", node_id=node_id)
        if self._rescheduler is not None:
            await self._rescheduler.sweep()
        return down, ready

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except ServiceUnavailable:
                log.warning("node_watch.database_unavailable")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
