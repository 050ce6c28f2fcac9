"""Discovery: keep the router in step with the operator's route table.

Long-polls ``GET /api/v1/routes?version=V&wait=S`` so a change is applied as soon as the
operator publishes it; every ``full_refresh`` seconds it asks for the whole table without a
version (repairs anything missed). Each table applied is written to a cache file
(atomically), and that file is loaded at start so the balancer serves the last known routes
when the operator is down.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

from pydantic import ValidationError

from zeitwork.core.errors import ZeitworkError
from zeitwork.core.files import atomic_write_text
from zeitwork.lb.router import RouteTableRouter
from zeitwork.wire.routes import RouteTable


class RouteSource(Protocol):
    async def fetch(self, *, version: int | None = None, wait: float = 0.0) -> RouteTable: ...


class RouteSync:
    def __init__(
        self,
        *,
        source: RouteSource,
        router: RouteTableRouter,
        cache: Path,
        log: Any,
        wait: float = 30.0,
        full_refresh: float = 60.0,
        retry_max: float = 10.0,
    ) -> None:
        self._source = source
        self._router = router
        self._cache = cache
        self._log = log
        self._wait = wait
        self._full_refresh = full_refresh
        self._retry_max = retry_max
        self.synced = asyncio.Event()
        self.last_error: str | None = None

    def load_cache(self) -> bool:
        """Apply the cached table, if any; return True when one was applied."""
        try:
            text = self._cache.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._log.warning("routes.cache_unreadable", path=str(self._cache), error=str(exc))
            return False
        try:
            table = RouteTable.model_validate_json(text)
        except ValidationError as exc:
            self._log.warning("routes.cache_invalid", path=str(self._cache), error=str(exc))
            return False
        result = self._router.apply(table)
        self._log.info("routes.cache_loaded", version=result.version, routes=len(table.routes))
        return True

    def _save(self, table: RouteTable) -> None:
        try:
            atomic_write_text(self._cache, table.model_dump_json())
        except OSError as exc:
            self._log.warning("routes.cache_write_failed", path=str(self._cache), error=str(exc))

    def apply(self, table: RouteTable) -> None:
        result = self._router.apply(table)
        self._log.info(
            "routes.applied",
            version=result.version,
            added=result.added,
            changed=result.changed,
            removed=result.removed,
            drained=result.drained,
        )
        self._save(table)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        last_full = 0.0
        while True:
            now = loop.time()
            full = not self.synced.is_set() or now - last_full >= self._full_refresh
            try:
                if full:
                    table = await self._source.fetch()
                    last_full = loop.time()
                else:
                    wait = min(self._wait, max(1.0, self._full_refresh - (now - last_full)))
                    table = await self._source.fetch(version=self._router.version, wait=wait)
            except (ZeitworkError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._log.warning("routes.fetch_failed", error=self.last_error, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = 0.5
            self.last_error = None
            if full or table.version != self._router.version:
                self.apply(table)  # unchanged routes cost a comparison each, nothing more
            self.synced.set()
