"""The edge's request policy, plugged into the shared proxy core.

Order on a request: ACME HTTP-01 answers (plain HTTP), per-client rate limit, HTTP->HTTPS
redirect, CORS preflight; everything else is forwarded. On every response: security headers
(HSTS on HTTPS only), CORS headers, and the request count by host and status. It is the
edge's router too (``route_to``): every request goes to the load balancer, through the pool
that carries its route's limits when the route has some (``DomainPolicy.pool``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from http import HTTPStatus

from zeitwork.edge.cors import CorsPolicy
from zeitwork.edge.rate_limit import Quota, RateLimiter
from zeitwork.edge.redirect import ACME_CHALLENGE_PREFIX, https_location
from zeitwork.edge.security_headers import SecurityHeaders
from zeitwork.proxy.backends import Pool
from zeitwork.proxy.headers import problem_body
from zeitwork.proxy.routing import prefix_matches
from zeitwork.proxy.types import ClientInfo, Headers, LocalResponse, RequestHead


@dataclass(frozen=True, slots=True)
class DomainPolicy:
    """What applies to one host (or to every host without its own entry)."""

    quota: Quota
    cors: CorsPolicy | None
    security: SecurityHeaders
    limit_key: str = ""  # "" = the global per-client bucket; else a bucket per client and host
    # the route's limits (response and tunnel idle timeouts) on a pool to the load balancer
    # (``routes.RouteLimitPools``); None: the edge's default pool and its global settings
    pool: Pool | None = None


def _header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def wants_html(headers: Headers) -> bool:
    accept = _header(headers, b"accept")
    if accept is None:
        return False
    return b"text/html" in accept and b"json" not in accept


def html_page(status: int, detail: str) -> bytes:
    """A small error page naming the status and ``detail`` (escaped)."""
    title = (
        escape(HTTPStatus(status).phrase) if status in HTTPStatus._value2member_map_ else "Error"
    )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{status} {title}"
        f"</title></head><body><h1>{status} {title}</h1><p>{escape(detail)}</p>"
        "</body></html>"
    ).encode()


def error_response(
    status: int, detail: str, headers: Headers, *, extra: Headers | None = None
) -> LocalResponse:
    """A small HTML page or an RFC 9457 problem, by the request's ``Accept``."""
    out: Headers = list(extra or [])
    if wants_html(headers):
        body = html_page(status, detail)
        out.append((b"content-type", b"text/html; charset=utf-8"))
    else:
        body = problem_body(status, detail)
        out.append((b"content-type", b"application/problem+json"))
    return LocalResponse(status=status, headers=out, body=body)


class EdgePolicy:
    """``RequestPolicy`` of the edge; all tables are built before traffic, not per request."""

    def __init__(
        self,
        *,
        default: DomainPolicy,
        domains: dict[str, DomainPolicy] | None = None,
        limiter: RateLimiter,
        has_certificate: Callable[[str], bool],
        challenge_answer: Callable[[str], str | None],
        https_port: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default = default
        self.domains = dict(domains or {})
        self.limiter = limiter
        self._has_certificate = has_certificate
        self._challenge_answer = challenge_answer
        self._https_port = https_port
        self._clock = clock
        self.prefixes: dict[str, tuple[tuple[str, DomainPolicy], ...]] = {}
        self.requests: dict[tuple[str, int], int] = {}
        self.known_hosts: set[str] = set()
        self.pool: Pool | None = None  # the load balancer (``route_to``)

    def route_to(self, pool: Pool) -> EdgePolicy:
        """This policy as the edge's router (``proxy.types.Router``) to ``pool``."""
        self.pool = pool
        return self

    def resolve(self, host: str, path: str) -> Pool | None:
        """The pool of the route's limits when it has some, else the load balancer's."""
        return self._for(host, path).pool or self.pool

    def _for(self, host: str, path: str) -> DomainPolicy:
        by_prefix = self.prefixes.get(host)
        if by_prefix is not None:  # longest prefix first
            for prefix, policy in by_prefix:
                if prefix_matches(path, prefix):
                    return policy
        return self.domains.get(host, self.default)

    def on_request(self, head: RequestHead, client: ClientInfo) -> LocalResponse | None:
        tls = client.tls
        if not tls and head.target.startswith(ACME_CHALLENGE_PREFIX):
            # the CA's validation requests are never limited nor redirected
            token = head.target[len(ACME_CHALLENGE_PREFIX) :].decode("latin-1")
            answer = self._challenge_answer(token)
            if answer is None:
                return error_response(404, "no such ACME challenge", head.headers)
            return LocalResponse(
                status=200, headers=[(b"content-type", b"text/plain")], body=answer.encode()
            )
        policy = self._for(head.host, head.path)
        key = client.client_ip + policy.limit_key if policy.limit_key else client.client_ip
        if not self.limiter.allow(key, self._clock(), policy.quota):
            return self._limited(key, policy.quota, head)
        if not tls:
            location = https_location(
                _header(head.headers, b"host") or head.host.encode(),
                head.target,
                https_port=self._https_port,
                has_certificate=self._has_certificate,
            )
            if location is not None:
                return LocalResponse(status=308, headers=[(b"location", location)])
        cors = policy.cors
        if cors is not None and head.method == b"OPTIONS":
            origin = _header(head.headers, b"origin")
            request_method = _header(head.headers, b"access-control-request-method")
            if origin is not None and request_method is not None:
                preflight = cors.preflight(origin)
                return LocalResponse(status=preflight.status, headers=list(preflight.headers))
        return None

    def _limited(self, key: str, quota: Quota, head: RequestHead) -> LocalResponse:
        now = self._clock()
        tat = self.limiter.peek(key) or now
        retry = max(0.0, tat + quota.interval - quota.tolerance - now)
        reset = max(0.0, tat - now)
        retry_s = max(1, int(retry + 0.999))
        extra: Headers = [
            (b"retry-after", str(retry_s).encode()),
            (b"ratelimit-policy", quota.policy_header.encode()),
            (b"ratelimit", f'"{quota.name}";r=0;t={max(1, int(reset + 0.999))}'.encode()),
        ]
        return error_response(
            429, f"rate limit exceeded; retry in {retry_s} s", head.headers, extra=extra
        )

    def on_response(
        self, head: RequestHead, client: ClientInfo, status: int, headers: Headers
    ) -> None:
        policy = self._for(head.host, head.path)
        policy.security.apply(headers, https=client.tls)
        cors = policy.cors
        if cors is not None and not (
            head.method == b"OPTIONS" and status in (204, 403) and _is_preflight(head.headers)
        ):
            headers.extend(cors.response_headers(_header(head.headers, b"origin")))
        host = head.host if head.host in self.known_hosts else "other"
        counts = self.requests
        k = (host, status)
        counts[k] = counts.get(k, 0) + 1


def _is_preflight(headers: Headers) -> bool:
    return _header(headers, b"access-control-request-method") is not None
