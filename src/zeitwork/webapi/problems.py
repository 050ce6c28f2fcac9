"""Mapping of the ZeitworkError tree (and framework errors) to problem+json responses.

This is the only place that decides which HTTP status an error gets.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from zeitwork.core import errors as e
from zeitwork.core import problems
from zeitwork.wire.problem import PROBLEM_CONTENT_TYPE, FieldError, Problem

log = structlog.get_logger("zeitwork.webapi")

STATUS_BY_ERROR: tuple[tuple[type[e.ZeitworkError], int], ...] = (
    (e.InvalidInput, 422),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.PayloadTooLarge, 413),
    (e.AuthenticationRequired, 401),
    (e.PermissionDenied, 403),
    (e.ServiceUnavailable, 503),
    (e.NotImplementedYet, 501),
    (e.RuntimeFailure, 502),
)


def status_for(exc: e.ZeitworkError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def problem_response(problem: Problem, *, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(exclude_none=True, mode="json"),
        status_code=problem.status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _zeitwork_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.ZeitworkError)
    status = status_for(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, e.ServiceUnavailable):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, e.AuthenticationRequired):
        headers["WWW-Authenticate"] = "Bearer"
    problem = Problem.of(
        code=exc.code,
        title=exc.title,
        status=status,
        detail=exc.detail,
        instance=request.url.path,
        **exc.extra,
    )
    return problem_response(problem, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        FieldError(field=_field_name(tuple(err.get("loc", ()))), message=str(err.get("msg")))
        for err in exc.errors()
    ]
    malformed = any(err.get("type") == "json_invalid" for err in exc.errors())
    detail = (
        "the request body is not valid JSON"
        if malformed
        else "; ".join(f"{fe.field}: {fe.message}" for fe in errors)
    )
    problem = Problem.of_type(
        problems.MALFORMED_JSON if malformed else problems.INVALID_INPUT,
        detail=detail,
        instance=request.url.path,
        errors=errors,
    )
    return problem_response(problem)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    problem = Problem.of_type(
        problems.for_status(exc.status_code), detail=detail, instance=request.url.path
    )
    return problem_response(problem, headers=dict(exc.headers or {}))


def internal_error_response(path: str) -> JSONResponse:
    """The 500 answer: says nothing about the cause (that is in the log, once)."""
    problem = Problem.of_type(
        problems.INTERNAL, detail="an unexpected error occurred; it has been logged", instance=path
    )
    return problem_response(problem)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Only reached for an error in the common middleware itself: that middleware catches
    # every error of the routes (see webapi.app) so uvicorn never logs a second traceback.
    log.error("request.unhandled_error", path=request.url.path, exc_info=exc)
    return internal_error_response(request.url.path)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(e.ZeitworkError, _zeitwork_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
