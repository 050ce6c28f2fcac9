"""Push the balancer's per-route totals to the operator every few seconds.

Worker 0 (the one that merges every worker's counters) posts its ``GET /stats/routes`` body
with the balancer's id to ``POST /api/v1/proxies/stats``. The id is ``LB_ID`` or one made at
the first start and kept in ``$ZEITWORK_DATA_DIR/lb/id``, so a restarted balancer keeps its
id and the operator sees its totals start again (a new ``started_at``). Pushing, not
scraping: balancers need no reachable admin port, and every operator sharing the database
sees the same samples. A failed push is logged once per new error and retried next period.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from zeitwork.core.errors import ZeitworkError
from zeitwork.core.files import atomic_write_text
from zeitwork.wire.proxy_stats import LB_ID_PATTERN

_ID = re.compile(LB_ID_PATTERN)


class StatsSink(Protocol):
    async def push(self, *, lb_id: str, stats: dict[str, Any]) -> None: ...


def load_or_make_id(path: Path) -> str:
    """The id kept in ``path``; a new ``lb-<12 hex>`` written there (atomically) if none."""
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if _ID.fullmatch(kept):
        return kept
    made = f"lb-{secrets.token_hex(6)}"
    atomic_write_text(path, made + "\n")
    return made


class StatsPusher:
    def __init__(
        self,
        *,
        sink: StatsSink,
        snapshot: Callable[[], dict[str, Any]],
        interval: float,
        log: Any,
        lb_id: str | None = None,
        id_file: Path | None = None,
    ) -> None:
        self._sink = sink
        self._snapshot = snapshot
        self._interval = interval
        self._log = log
        self._id_file = id_file
        self.lb_id = lb_id
        self.last_error: str | None = None
        self.pushed = 0

    def load_id(self) -> str:
        """Resolve the id (a small file read at start, before the loops run)."""
        if self.lb_id is None:
            if self._id_file is None:
                raise ValueError("StatsPusher needs lb_id or id_file")
            self.lb_id = load_or_make_id(self._id_file)
        return self.lb_id

    async def push_once(self) -> bool:
        lb_id = self.load_id()
        try:
            await self._sink.push(lb_id=lb_id, stats=self._snapshot())
        except (ZeitworkError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self.last_error:
                self._log.warning("lb.stats_push_failed", lb_id=lb_id, error=error)
            self.last_error = error
            return False
        if self.last_error is not None:
            self._log.info("lb.stats_push_recovered", lb_id=lb_id)
        self.last_error = None
        self.pushed += 1
        return True

    async def run(self) -> None:
        while True:
            await self.push_once()
            await asyncio.sleep(self._interval)
