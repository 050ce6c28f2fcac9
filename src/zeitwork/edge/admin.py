"""The edge's admin listener (``EDGE_ADMIN_HOST:EDGE_ADMIN_PORT``, worker 0): ``/health``
(whether the load balancer accepts connections) and ``/metrics`` (Prometheus).

It runs on the proxy core, like the load balancer's admin, with a policy that answers every
request itself: ``/health`` as a ``PendingResponse``, since it connects to the load balancer
first. The paths, statuses and bodies are those of the hand-parsed server it replaces, and
so is ``Connection: close`` after each answer (a client may read an answer to the end).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry

from zeitwork.observability.metrics import CONTENT_TYPE, render_metrics
from zeitwork.proxy.types import (
    ClientInfo,
    Headers,
    LocalResponse,
    PendingResponse,
    RequestHead,
)

_JSON = (b"content-type", b"application/json")
_OK = b'{"status":"ok"}'
_DEGRADED = b'{"status":"degraded","detail":"load balancer unreachable"}'
_NOT_FOUND = b'{"status":404}'
PROBE_TIMEOUT = 1.0  # s for the load balancer to accept a connection


async def accepts_connections(host: str, port: int) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``PROBE_TIMEOUT``."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class EdgeAdmin:
    """The admin listener's request policy: every request is answered here."""

    def __init__(
        self, *, registry: CollectorRegistry, lb_reachable: Callable[[], Awaitable[bool]]
    ) -> None:
        self._registry = registry
        self._lb_reachable = lb_reachable
        self._health = PendingResponse(self._health_answer)

    def on_request(
        self, head: RequestHead, client: ClientInfo
    ) -> LocalResponse | PendingResponse | None:
        # the whole target, as before: "/health?x" is no admin resource
        if head.target == b"/health":
            return self._health
        if head.target == b"/metrics":
            return LocalResponse(
                200,
                [(b"content-type", CONTENT_TYPE.encode())],
                render_metrics(self._registry),
                close=True,
            )
        return LocalResponse(404, [_JSON], _NOT_FOUND, close=True)

    async def _health_answer(self) -> LocalResponse:
        if await self._lb_reachable():
            return LocalResponse(200, [_JSON], _OK, close=True)
        return LocalResponse(503, [_JSON], _DEGRADED, close=True)

    def on_response(
        self, head: RequestHead, client: ClientInfo, status: int, headers: Headers
    ) -> None:
        return None
