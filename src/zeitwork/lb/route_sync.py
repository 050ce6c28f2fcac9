"""Discovery: keep the router in step with the operator's route table.

Long-polls ``GET /api/v1/routes?version=V&wait=S`` so a change is applied as soon as the
operator publishes it; every ``full_refresh`` seconds it asks for the whole table without a
version (repairs anything missed): the shared ``serving.poll.VersionedPoll``. Each table
applied is written to a cache file (atomically), and that file is loaded at start so the
balancer serves the last known routes when the operator is down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from zeitwork.core.files import atomic_write_text
from zeitwork.lb.router import RouteTableRouter
from zeitwork.serving.poll import RouteSource, VersionedPoll
from zeitwork.wire.routes import RouteTable


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
        self._poll = VersionedPoll(
            fetch=self._fetch,
            apply=lambda table, full: self.apply(table),
            log=log,
            failed_event="routes.fetch_failed",
            wait=wait,
            full_refresh=full_refresh,
            retry_max=retry_max,
        )
        self.synced = self._poll.synced

    @property
    def last_error(self) -> str | None:
        return self._poll.last_error

    async def _fetch(self, version: int | None, wait: float) -> RouteTable:
        return await self._source.fetch(version=version, wait=wait)

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
        self._poll.version = table.version  # also when applied from outside the poll
        self._save(table)

    async def run(self) -> None:
        await self._poll.run()
