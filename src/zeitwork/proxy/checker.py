"""Active health checks: each backend checked by its own ``CheckSpec`` on its own interval.

The loop only moves bytes; what a check is and whether an answer passes live in
``health.CheckSpec``, thresholds in ``health.ActiveHealth`` (via ``Backend.record_check``),
and which backends are due when in the two pure functions below. A backend with a
``none`` check, or draining, is never probed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from zeitwork.proxy.backends import Backend
from zeitwork.proxy.health import CheckSpec, status_of

BackendSource = Callable[[], Iterable[Backend]]

MAX_WAKE = 0.5
"""Longest sleep of the loop: a backend that appears is checked within this long."""


def _checked(backend: Backend) -> bool:
    return not backend.draining and backend.check.kind != "none"


def due(backends: Iterable[Backend], now: float, busy: set[Backend]) -> list[Backend]:
    """The backends whose next check is due (not already being checked)."""
    return [b for b in backends if b.next_check <= now and b not in busy and _checked(b)]


def next_wake(backends: Iterable[Backend], now: float, cap: float = MAX_WAKE) -> float:
    """Seconds to sleep until the earliest next check, at most ``cap``."""
    delay = cap
    for b in backends:
        if _checked(b):
            delay = min(delay, b.next_check - now)
    return max(0.0, delay)


async def probe(host: str, port: int, spec: CheckSpec, *, default_host: str) -> tuple[bool, str]:
    """One check: (passed, what happened), e.g. ``(False, "GET /health -> 503")``."""
    if spec.kind == "none":
        return True, ""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(spec.limit):
            reader, writer = await asyncio.open_connection(host, port)
            if spec.kind == "tcp":
                return True, f"connected to :{port}"
            writer.write(spec.request(default_host))
            line = await reader.readline()
    except TimeoutError:
        return False, f"no answer on :{port} within {spec.limit:g}s"
    except ConnectionRefusedError:
        return False, f"connection refused on :{port}"
    except (OSError, ValueError) as exc:
        return False, f"{type(exc).__name__} on :{port}: {exc}"[:200]
    finally:
        if writer is not None:
            writer.close()
    status = status_of(line)
    if status is None:
        return False, f"GET {spec.path}: not an HTTP response"
    return spec.passes(status), f"GET {spec.path} -> {status}"


async def check_backend(backend: Backend) -> bool:
    """Probe ``backend`` with its current check and record the result (unless it started
    draining meanwhile); return whether it passed."""
    spec = backend.check
    port = spec.port or backend.port
    ok, detail = await probe(backend.host, port, spec, default_host=backend.address)
    if not backend.draining:
        backend.record_check(ok, detail)
    return ok


class HealthChecker:
    """Checks every backend from ``backends()`` when its interval comes round, concurrently."""

    def __init__(self, *, backends: BackendSource, max_wake: float = MAX_WAKE) -> None:
        self._backends = backends
        self._max_wake = max_wake

    async def check_all(self) -> None:
        """Check every checked backend once, now (tests, start-up)."""
        targets = [b for b in self._backends() if _checked(b)]
        await asyncio.gather(*(check_backend(b) for b in targets))

    @staticmethod
    async def _check(backend: Backend, busy: set[Backend]) -> None:
        try:
            await check_backend(backend)
        finally:
            busy.discard(backend)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        busy: set[Backend] = set()
        async with asyncio.TaskGroup() as tasks:
            while True:
                now = loop.time()
                backends = list(self._backends())
                for backend in due(backends, now, busy):
                    backend.next_check = now + backend.check.interval
                    busy.add(backend)
                    tasks.create_task(self._check(backend, busy))
                await asyncio.sleep(next_wake(backends, loop.time(), self._max_wake))
