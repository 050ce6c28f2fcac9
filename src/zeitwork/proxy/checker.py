"""Active health checks: an HTTP GET of the health path on every backend, every interval.

The loop only moves bytes; thresholds live in ``health.ActiveHealth`` (via
``Backend.record_check``). A check passes on a 2xx or 3xx answer within the timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from zeitwork.proxy.backends import Backend

BackendSource = Callable[[], Iterable[Backend]]


async def check_once(backend: Backend, *, path: str, limit: float, host: str = "") -> bool:
    """One health probe: connect, ``GET path``, read the status line."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(backend.host, backend.port)
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host or backend.address}\r\n"
                "User-Agent: zeitwork-health\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(request)
            line = await reader.readline()
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return False
    return 200 <= int(parts[1]) < 400


class HealthChecker:
    """Checks every backend from ``backends()`` each ``interval`` seconds, concurrently."""

    def __init__(
        self,
        *,
        backends: BackendSource,
        path: str = "/health",
        interval: float = 2.0,
        timeout: float = 1.0,
    ) -> None:
        self._backends = backends
        self.path = path
        self.interval = interval
        self.timeout = min(timeout, interval)

    async def check_all(self) -> None:
        targets = [b for b in self._backends() if not b.draining]
        if not targets:
            return
        results = await asyncio.gather(
            *(check_once(b, path=self.path, limit=self.timeout) for b in targets)
        )
        for backend, ok in zip(targets, results, strict=True):
            if not backend.draining:
                backend.record_check(ok)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.check_all()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))
