"""The one exception root of Zeitwork and its subclasses.

Every boundary (psycopg, httpx, the Firecracker API, runc) translates its own errors into
one of these with ``raise ... from exc``; the HTTP layers map them to statuses in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ZeitworkError(Exception):
    """Root of every error Zeitwork raises on purpose."""

    title: str = "Internal error"
    code: str = "internal"

    def __init__(self, detail: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})


class InvalidInput(ZeitworkError):
    title = "Invalid input"
    code = "invalid-input"


class NotFound(ZeitworkError):
    title = "Not found"
    code = "not-found"


class Conflict(ZeitworkError):
    title = "Conflict"
    code = "conflict"


class InvalidTransition(Conflict):
    title = "Illegal state change"
    code = "invalid-transition"


class InsufficientCapacity(Conflict):
    title = "Insufficient capacity"
    code = "insufficient-capacity"


class PayloadTooLarge(ZeitworkError):
    title = "Payload too large"
    code = "payload-too-large"


class AuthenticationRequired(ZeitworkError):
    title = "Authentication required"
    code = "unauthenticated"


class PermissionDenied(ZeitworkError):
    title = "Forbidden"
    code = "forbidden"


class ServiceUnavailable(ZeitworkError):
    """A dependency (database, operator, peer) cannot be reached right now."""

    title = "Service unavailable"
    code = "unavailable"

    def __init__(
        self, detail: str, *, retry_after: int = 5, extra: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(detail, extra=extra)
        self.retry_after = retry_after


class NotImplementedYet(ZeitworkError):
    """A documented feature that is not built yet; answered as 501, never faked."""

    title = "Not implemented"
    code = "not-implemented"


class RuntimeFailure(ZeitworkError):
    """A runtime driver (runc, firecracker) failed; the message is the runtime's own."""

    title = "Runtime failure"
    code = "runtime-failure"
