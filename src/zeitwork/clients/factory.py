"""The one place that creates HTTP clients, and the one place httpx errors are translated."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from zeitwork import __version__
from zeitwork.core.errors import (
    AuthenticationRequired,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    ZeitworkError,
)

USER_AGENT = f"zeitwork/{__version__}"


@dataclass(frozen=True, slots=True)
class ClientOptions:
    base_url: str
    token: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    verify: bool | str | ssl.SSLContext = True
    max_connections: int = 20
    extra_headers: dict[str, str] = field(default_factory=dict)


def http_client(options: ClientOptions) -> httpx.AsyncClient:
    """Build the pooled async client a service keeps for its lifetime (never one per call)."""
    headers = {"User-Agent": USER_AGENT, **options.extra_headers}
    if options.token:
        headers["Authorization"] = f"Bearer {options.token}"
    timeout = httpx.Timeout(options.read_timeout, connect=options.connect_timeout)
    limits = httpx.Limits(
        max_connections=options.max_connections, max_keepalive_connections=options.max_connections
    )
    return httpx.AsyncClient(
        base_url=options.base_url,
        headers=headers,
        timeout=timeout,
        limits=limits,
        verify=options.verify,
    )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)[:300]


def raise_for_status(response: httpx.Response) -> None:
    """Translate an error response of a Zeitwork peer into the ZeitworkError tree."""
    if response.is_success:
        return
    status = response.status_code
    detail = f"{response.request.method} {response.request.url.path}: {_detail(response)}"
    if status == 401:
        raise AuthenticationRequired(detail)
    if status == 403:
        raise PermissionDenied(detail)
    if status == 404:
        raise NotFound(detail)
    if status == 409:
        raise Conflict(detail)
    if status in (400, 413, 422):
        raise InvalidInput(detail)
    if status >= 500:
        retry = response.headers.get("Retry-After", "5")
        raise ServiceUnavailable(detail, retry_after=int(retry) if retry.isdigit() else 5)
    raise ZeitworkError(detail)


@contextmanager
def map_http_errors(peer: str) -> Iterator[None]:
    """Turn transport failures into ServiceUnavailable naming the peer."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServiceUnavailable(f"{peer} timed out: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:
        raise ServiceUnavailable(f"{peer} is unreachable: {exc}") from exc
