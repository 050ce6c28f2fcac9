"""The one exception root of Zeitwork and its subclasses.

Every boundary (psycopg, httpx, the Firecracker API, runc) translates its own errors into
one of these with ``raise ... from exc``; the HTTP layers map them to statuses in one place.
Codes and titles come from the one problem vocabulary, ``core.problems``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zeitwork.core import problems


class ZeitworkError(Exception):
    """Root of every error Zeitwork raises on purpose."""

    title: str = problems.INTERNAL.title
    code: str = problems.INTERNAL.code

    def __init__(self, detail: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})


class InvalidInput(ZeitworkError):
    title = problems.INVALID_INPUT.title
    code = problems.INVALID_INPUT.code


class NotFound(ZeitworkError):
    title = problems.NOT_FOUND.title
    code = problems.NOT_FOUND.code


class Conflict(ZeitworkError):
    title = problems.CONFLICT.title
    code = problems.CONFLICT.code


class InvalidTransition(Conflict):
    title = problems.INVALID_TRANSITION.title
    code = problems.INVALID_TRANSITION.code


class InsufficientCapacity(Conflict):
    title = problems.INSUFFICIENT_CAPACITY.title
    code = problems.INSUFFICIENT_CAPACITY.code


class PayloadTooLarge(ZeitworkError):
    title = problems.PAYLOAD_TOO_LARGE.title
    code = problems.PAYLOAD_TOO_LARGE.code


class AuthenticationRequired(ZeitworkError):
    title = problems.UNAUTHENTICATED.title
    code = problems.UNAUTHENTICATED.code


class PermissionDenied(ZeitworkError):
    title = problems.FORBIDDEN.title
    code = problems.FORBIDDEN.code


class ServiceUnavailable(ZeitworkError):
    """A dependency (database, operator, peer) cannot be reached right now."""

    title = problems.SERVICE_UNAVAILABLE.title
    code = problems.SERVICE_UNAVAILABLE.code

    def __init__(
        self, detail: str, *, retry_after: int = 5, extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(detail, extra=extra)
        self.retry_after = retry_after


class NotImplementedYet(ZeitworkError):
    """A documented feature that is not built yet; answered as 501, never faked."""

    title = problems.NOT_IMPLEMENTED.title
    code = problems.NOT_IMPLEMENTED.code


class RuntimeFailure(ZeitworkError):
    """A runtime driver (runc, firecracker) failed; the message is the runtime's own."""

    title = problems.RUNTIME_FAILURE.title
    code = problems.RUNTIME_FAILURE.code
