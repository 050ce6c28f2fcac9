"""The one vocabulary of RFC 9457 problem types, used by every Zeitwork HTTP answer: the
operator's and the node agent's APIs (``core.errors`` takes its codes from here), and the
load balancer's and the edge's own answers (the proxy core renders them from here).

A problem type is ``https://zeitwork.dev/problems/<code>``; ``code`` is stable (clients
may match on it), ``title`` is the short human summary that goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

PROBLEM_TYPE_BASE = "https://zeitwork.dev/problems/"


@dataclass(frozen=True, slots=True)
class ProblemType:
    code: str
    title: str
    status: int

    @property
    def uri(self) -> str:
        return PROBLEM_TYPE_BASE + self.code


# -- client errors -------------------------------------------------------------------------
BAD_REQUEST = ProblemType("bad-request", "Bad request", 400)
MALFORMED_JSON = ProblemType("malformed-json", "Malformed JSON", 400)
UNAUTHENTICATED = ProblemType("unauthenticated", "Authentication required", 401)
FORBIDDEN = ProblemType("forbidden", "Forbidden", 403)
NOT_FOUND = ProblemType("not-found", "Not found", 404)
METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", "Method not allowed", 405)
NOT_ACCEPTABLE = ProblemType("not-acceptable", "Not acceptable", 406)
REQUEST_TIMEOUT = ProblemType("request-timeout", "Request timeout", 408)
CONFLICT = ProblemType("conflict", "Conflict", 409)
INVALID_TRANSITION = ProblemType("invalid-transition", "Illegal state change", 409)
INSUFFICIENT_CAPACITY = ProblemType("insufficient-capacity", "Insufficient capacity", 409)
PAYLOAD_TOO_LARGE = ProblemType("payload-too-large", "Payload too large", 413)
URI_TOO_LONG = ProblemType("uri-too-long", "URI too long", 414)
UNSUPPORTED_MEDIA_TYPE = ProblemType("unsupported-media-type", "Unsupported media type", 415)
EXPECTATION_FAILED = ProblemType("expectation-failed", "Expectation failed", 417)
INVALID_INPUT = ProblemType("invalid-input", "Invalid input", 422)
RATE_LIMITED = ProblemType("rate-limited", "Too many requests", 429)
HEADERS_TOO_LARGE = ProblemType("headers-too-large", "Request header fields too large", 431)
# -- server errors -------------------------------------------------------------------------
INTERNAL = ProblemType("internal", "Internal error", 500)
NOT_IMPLEMENTED = ProblemType("not-implemented", "Not implemented", 501)
BAD_GATEWAY = ProblemType("bad-gateway", "Bad gateway", 502)
RUNTIME_FAILURE = ProblemType("runtime-failure", "Runtime failure", 502)
SERVICE_UNAVAILABLE = ProblemType("service-unavailable", "Service unavailable", 503)
NOT_READY = ProblemType("not-ready", "Not ready", 503)
GATEWAY_TIMEOUT = ProblemType("gateway-timeout", "Gateway timeout", 504)

ALL: tuple[ProblemType, ...] = (
    BAD_REQUEST,
    MALFORMED_JSON,
    UNAUTHENTICATED,
    FORBIDDEN,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    NOT_ACCEPTABLE,
    REQUEST_TIMEOUT,
    CONFLICT,
    INVALID_TRANSITION,
    INSUFFICIENT_CAPACITY,
    PAYLOAD_TOO_LARGE,
    URI_TOO_LONG,
    UNSUPPORTED_MEDIA_TYPE,
    EXPECTATION_FAILED,
    INVALID_INPUT,
    RATE_LIMITED,
    HEADERS_TOO_LARGE,
    INTERNAL,
    NOT_IMPLEMENTED,
    BAD_GATEWAY,
    RUNTIME_FAILURE,
    SERVICE_UNAVAILABLE,
    NOT_READY,
    GATEWAY_TIMEOUT,
)

# the first one listed for a status is its default
BY_STATUS: dict[int, ProblemType] = {p.status: p for p in reversed(ALL)}


def for_status(status: int) -> ProblemType:
    """The default problem type of an HTTP status (a generic one for a status not listed)."""
    found = BY_STATUS.get(status)
    if found is not None:
        return found
    return ProblemType("client-error" if status < 500 else "server-error", "Error", status)
