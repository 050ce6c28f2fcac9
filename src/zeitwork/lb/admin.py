"""The admin listener (``LB_ADMIN_HOST:LB_ADMIN_PORT``): ``/health``, ``/backends``,
``/stats/routes`` (per-route request totals as JSON) and ``/metrics`` (Prometheus).

It runs on the same proxy engine (``serving/admin.py``) with a policy that answers every
request locally, so the data port keeps every path for the apps and the admin port inherits
the engine's hardening.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from zeitwork.observability.metrics import CONTENT_TYPE, render_metrics
from zeitwork.proxy.headers import problem_body
from zeitwork.proxy.types import ClientInfo, Headers, LocalResponse, RequestHead

_JSON = (b"content-type", b"application/json")
_PROBLEM = (b"content-type", b"application/problem+json")


class AdminPolicy:
    def __init__(
        self,
        *,
        state: Callable[[], dict[str, Any]],
        backends: Callable[[], list[dict[str, Any]]],
        registry: CollectorRegistry,
        routes: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._state = state
        self._backends = backends
        self._routes = routes
        self._registry = registry

    def on_request(self, head: RequestHead, client: ClientInfo) -> LocalResponse | None:
        if head.method not in (b"GET", b"HEAD"):
            return LocalResponse(
                405, [_PROBLEM, (b"allow", b"GET, HEAD")], problem_body(405, "use GET")
            )
        path = head.path
        if path == "/health":
            return LocalResponse(200, [_JSON], json.dumps(self._state()).encode())
        if path == "/backends":
            return LocalResponse(200, [_JSON], json.dumps(self._backends()).encode())
        if path == "/stats/routes" and self._routes is not None:
            return LocalResponse(200, [_JSON], json.dumps(self._routes()).encode())
        if path == "/metrics":
            return LocalResponse(
                200, [(b"content-type", CONTENT_TYPE.encode())], render_metrics(self._registry)
            )
        return LocalResponse(404, [_PROBLEM], problem_body(404, f"no admin resource {path}"))

    def on_response(
        self, head: RequestHead, client: ClientInfo, status: int, headers: Headers
    ) -> None:
        headers.append((b"cache-control", b"no-store"))
