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

from zeitwork.core import problems
from zeitwork.observability.metrics import CONTENT_TYPE, HttpMetrics, render_metrics
from zeitwork.webapi import unsafe_text
from zeitwork.webapi.problems import (
    install_problem_handlers,
    internal_error_response,
    problem_response,
)
from zeitwork.wire.problem import PROBLEM_CONTENT_TYPE, FieldError, Problem

log = structlog.get_logger("zeitwork.webapi")

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

        async def reply(response: Response) -> None:
            response.headers["x-request-id"] = request_id
            await response(scope, receive, send)
            status_holder["status"] = response.status_code

        try:
            declared = headers.get(b"content-length")
            if declared is not None and _too_big(declared, limit):
                await reply(_too_large(scope, limit))
                return
            unsafe = unsafe_text.in_path(path) + unsafe_text.in_query(
                scope.get("query_string", b"")
            )
            if unsafe:
                await reply(_unsafe(scope, unsafe))
                return
            app_receive = _limited(receive, limit)
            if _scans_body(headers.get(b"content-type"), limit):
                try:
                    body = await _read_body(app_receive)
                except _BodyTooLarge:
                    await reply(_too_large(scope, limit))
                    return
                if body is None:  # the client went away mid-body
                    status_holder["status"] = 499
                    return
                unsafe = unsafe_text.in_json_body(body)
                if unsafe:
                    await reply(_unsafe(scope, unsafe))
                    return
                app_receive = _replay(body, receive)
            await self._call_app(
                scope,
                app_receive,
                send,
                request_id=request_id,
                status_holder=status_holder,
                limit=limit,
            )
        finally:
            self._observe(scope, status_holder["status"], start)

    async def _call_app(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        request_id: str,
        status_holder: dict[str, int],
        limit: int,
    ) -> None:
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                status_holder["status"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except _BodyTooLarge:
            if not started:
                await _too_large(scope, limit)(scope, receive, send_with_id)
        except Exception as exc:
            # Logged here, once, as one event (uvicorn would log a second traceback if it
            # saw the exception); the client gets a problem+json 500 unless the response
            # had already started, in which case the connection is closed by the server.
            log.error("request.unhandled_error", path=scope["path"], exc_info=exc)
            if not started:
                await internal_error_response(scope["path"])(scope, receive, send_with_id)

    def _observe(self, scope: Scope, status: int, start: float) -> None:
        self.metrics.observe(
            method=scope["method"],
            route=_route_template(scope),
            status=status,
            seconds=time.perf_counter() - start,
        )


class _BodyTooLarge(Exception):
    pass


_JSON_SCAN_MAX = 16 * 1024 * 1024
"""Bodies without a content type are scanned (FastAPI parses them as JSON) only on routes
whose body limit is at most this: the JSON routes, not an image upload."""


def _too_big(declared: bytes, limit: int) -> bool:
    try:
        return int(declared) > limit
    except ValueError:
        return False


def _scans_body(content_type: bytes | None, limit: int) -> bool:
    if content_type is None:
        return limit <= _JSON_SCAN_MAX
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _limited(receive: Receive, limit: int) -> Receive:
    received = 0

    async def limited_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
        return message

    return limited_receive


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body, or None when the client disconnected before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body already read, then the real channel."""
    pending = True

    async def replay_receive() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


def _too_large(scope: Scope, limit: int) -> Response:
    problem = Problem.of_type(
        problems.PAYLOAD_TOO_LARGE,
        detail=f"the request body exceeds the limit of {limit} bytes",
        instance=scope["path"],
    )
    return problem_response(problem, headers={"connection": "close"})


def _unsafe(scope: Scope, found: list[unsafe_text.UnsafeText]) -> Response:
    errors = [FieldError(field=item.field, message=item.message) for item in found]
    problem = Problem.of_type(
        problems.INVALID_INPUT,
        detail="; ".join(f"{fe.field}: {fe.message}" for fe in errors),
        instance=unsafe_text.printable(scope["path"]),
        errors=errors,
    )
    return problem_response(problem)


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
    _document_problems(app)
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
            problem = Problem.of_type(
                problems.NOT_READY,
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


def _document_problems(app: FastAPI) -> None:
    """Make /openapi.json say what a 422 really is: problem+json, not FastAPI's default
    ``HTTPValidationError`` (``{"detail": [...]}``), which no Zeitwork API sends."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem.pop("$defs", {}))
        components["Problem"] = problem
        content = {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                invalid = operation.get("responses", {}).get("422")
                if invalid is not None:
                    invalid["content"] = content
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
