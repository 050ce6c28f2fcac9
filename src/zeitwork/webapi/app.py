"""Common wiring for the FastAPI services (operator, node agent).

``install_common`` adds, in order: problem handlers, a pure-ASGI middleware that assigns or
accepts ``X-Request-Id``, binds it to the log context, enforces a body limit, and records
request metrics by route template; and the ``/health``, ``/health/ready`` and ``/metrics``
routes, which need no token.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zeitwork.observability.metrics import CONTENT_TYPE, HttpMetrics, render_metrics
from zeitwork.webapi.problems import install_problem_handlers, problem_response
from zeitwork.wire.problem import Problem

HealthCheck = Callable[[], Awaitable[str | None]]
"""A readiness probe: returns None when ready, or a short reason when not."""

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class _CommonMiddleware:
    def __init__(
        self, app: ASGIApp, *, metrics: HttpMetrics, body_limit: Callable[[str], int], service: str
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.body_limit = body_limit
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        path: str = scope["path"]
        limit = self.body_limit(path)
        status_holder = {"status": 500}
        start = time.perf_counter()

        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = False
            if too_big:
                await self._too_large(scope, receive, send, limit, request_id)
                self._observe(scope, 413, start)
                return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send, limit, request_id)
            status_holder["status"] = 413
        finally:
            self._observe(scope, status_holder["status"], start)

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        self.metrics.observe(
            method=scope["method"],
            route=_route_template(scope),
            status=status,
            seconds=time.perf_counter() - start,
        )

    @staticmethod
    async def _too_large(
        scope: Scope, receive: Receive, send: Send, limit: int, request_id: str
    ) -> None:
        problem = Problem.of(
            code="payload-too-large",
            title="Payload too large",
            status=413,
            detail=f"the request body exceeds the limit of {limit} bytes",
            instance=scope["path"],
        )
        response = problem_response(
            problem, headers={"x-request-id": request_id, "connection": "close"}
        )
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _route_template(scope: Scope) -> str:
    """The matched route's path template, with the prefixes of included routers.

    FastAPI includes routers lazily: ``scope["route"]`` is the original route, whose path
    lacks the include prefixes (``/nodes/{node_id}`` for ``/api/v1/nodes/{node_id}``); the
    full template is on the effective route context FastAPI records in ``scope["fastapi"]``.
    """
    fastapi_scope = scope.get("fastapi")
    if isinstance(fastapi_scope, dict):
        context = fastapi_scope.get("effective_route_context")
        if context is not None:
            template = getattr(getattr(context, "starlette_route", None), "path_format", None)
            template = template or getattr(context, "path_format", None)
            if isinstance(template, str) and template:
                return template
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


def install_common(
    app: FastAPI,
    *,
    service: str,
    registry: CollectorRegistry,
    readiness: list[tuple[str, HealthCheck]],
    body_limit: Callable[[str], int] = lambda _path: 1024 * 1024,
    before_metrics: Callable[[], Awaitable[None]] | None = None,
) -> HttpMetrics:
    """Install error handlers, the request middleware and the health/metrics routes."""
    install_problem_handlers(app)
    metrics = HttpMetrics(registry=registry)
    app.add_middleware(_CommonMiddleware, metrics=metrics, body_limit=body_limit, service=service)

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "service": service}

    @app.get("/health/ready", include_in_schema=False)
    async def ready() -> Response:
        reasons: dict[str, str] = {}
        for name, check in readiness:
            try:
                reason = await check()
            except Exception as exc:  # a probe that raises means "not ready", with why
                reason = f"{type(exc).__name__}: {exc}"
            if reason is not None:
                reasons[name] = reason
        if reasons:
            problem = Problem.of(
                code="not-ready",
                title="Not ready",
                status=503,
                detail="; ".join(f"{k}: {v}" for k, v in reasons.items()),
                checks=reasons,
            )
            return problem_response(problem, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ready", "service": service})

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route() -> Response:
        if before_metrics is not None:
            await before_metrics()
        return Response(render_metrics(registry), media_type=CONTENT_TYPE)

    return metrics
