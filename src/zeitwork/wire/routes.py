"""The route table the operator serves to load balancers (and edges).

``GET /api/v1/routes?version=V&wait=S`` answers ``RouteTable`` immediately when the table's
version differs from V, otherwise when it changes or after S seconds (long-poll).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from zeitwork.wire.health import HealthCheck

Algorithm = Literal["round-robin", "least-connections", "ip-hash"]
MAX_IDLE_SECONDS = 86400.0
"""The longest per-route idle timeout (a day)."""
MAX_TUNNELS = 1_000_000
"""The largest per-route tunnel count."""
IdleSeconds = Annotated[float, Field(gt=0, le=MAX_IDLE_SECONDS, allow_inf_nan=False)]
"""A per-route idle timeout: a finite number of seconds, over 0, at most a day."""
TunnelCount = Annotated[int, Field(ge=1, le=MAX_TUNNELS)]
"""A per-route tunnel count."""
BackendProtocol = Literal["http1", "h2c"]
"""How proxies speak to an app: HTTP/1.1 keep-alive, or h2c (HTTP/2 cleartext with prior
knowledge: gRPC and other HTTP/2-only servers; ``docs/http2.md``)."""


class CorsOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    origins: list[str] = Field(default_factory=list)  # empty: CORS off for this domain
    methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    )
    headers: list[str] = Field(default_factory=list)
    expose_headers: list[str] = Field(default_factory=list)
    credentials: bool = False
    max_age: int = Field(default=600, ge=0)


class HeadersOverride(BaseModel):
    """Per-domain security headers; a field left out inherits the global value, ``""`` (or
    0 for HSTS) switches that header off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hsts_max_age: int | None = Field(default=None, ge=0)
    hsts_include_subdomains: bool | None = None
    frame_options: str | None = None
    referrer_policy: str | None = None
    permissions_policy: str | None = None
    content_security_policy: str | None = None
    override: list[str] | None = None


class EdgePolicyOverride(BaseModel):
    """A domain's CORS and security-header policy at the edges (``PUT
    /api/v1/domains/{id}/edge-policy``; the same shape as an ``EDGE_DOMAIN_POLICIES`` entry
    without its rate limit, which has its own fields). Left out: the edge's global policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cors: CorsOverride | None = None
    headers: HeadersOverride | None = None


class PathRateLimit(BaseModel):
    """A rate limit for the requests under one path prefix of a domain (``PUT
    /api/v1/domains/{id}/path-rate-limits``); the prefix matches at segment boundaries
    (``/api`` covers ``/api`` and ``/api/...``, not ``/apis``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path_prefix: str = Field(
        min_length=2,
        max_length=256,
        pattern=r"^/[\x21\x22\x24-\x3e\x40-\x7e]*$",  # printable ASCII, no "?" or "#"
        description="a path (no query), not '/' itself",
    )
    rps: float = Field(gt=0, le=1_000_000, description="requests per second per client")
    burst: int | None = Field(default=None, ge=1, le=1_000_000, description="default 2 x rps")


class RouteBackend(BaseModel):
    instance_id: uuid.UUID | None = None
    address: str = Field(description="host:port")
    weight: int = Field(default=1, ge=0, le=1000)
    release_id: uuid.UUID | None = Field(
        default=None, description="the release this instance runs (None: not a release's)"
    )
    protocol: BackendProtocol = Field(
        default="http1", description="its release's backend_protocol: http1 or h2c"
    )


class Route(BaseModel):
    host: str = Field(description="lower-case host name, no port")
    path_prefix: str = "/"
    deployment_id: uuid.UUID | None = None
    project_environment_id: uuid.UUID | None = Field(
        default=None, description="the app environment the domain is bound to"
    )
    release_id: uuid.UUID | None = Field(
        default=None, description="the environment's current release"
    )
    health_check: HealthCheck | None = Field(
        default=None,
        description="the current release's check: what load balancers' active checks use "
        "(None: their own default)",
    )
    algorithm: Algorithm | None = None
    backends: list[RouteBackend]
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    policy: EdgePolicyOverride | None = Field(
        default=None, description="the domain's CORS / security headers at the edges"
    )
    verified: bool = Field(
        default=False,
        description="the domain's owner proved control (DNS); only then may edges order ACME "
        "certificates for it",
    )
    # the release's per-route limits (migration 0017); None: unset (the proxies' own)
    response_idle_timeout: IdleSeconds | None = Field(
        default=None,
        description="the current release's: seconds a response may stall (before its head and "
        "between its reads) before load balancers cut it (None: their own timeouts)",
    )
    tunnel_idle_timeout: IdleSeconds | None = Field(
        default=None,
        description="the current release's: seconds an upgraded connection (WebSocket) may be "
        "idle before load balancers close it (None: their own)",
    )
    max_tunnels: TunnelCount | None = Field(
        default=None,
        description="the current release's: upgraded connections each load balancer worker "
        "holds open on this route at most; more are answered 503 (None: no limit)",
    )


class RouteTable(BaseModel):
    version: int = Field(ge=0)
    routes: list[Route]
    default_backends: list[RouteBackend] = Field(
        default_factory=list, description="every running instance; for unknown hosts"
    )
