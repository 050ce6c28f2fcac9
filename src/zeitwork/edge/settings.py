"""Edge proxy configuration (environment variables, validated once at start-up)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from zeitwork.proxy.headers import parse_networks
from zeitwork.settings import ServiceSettings
from zeitwork.wire.routes import CorsOverride, HeadersOverride

TlsMode = Literal["static", "internal", "acme"]
ChallengeType = Literal["http-01", "tls-alpn-01"]


class RateOverride(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rps: float = Field(gt=0)
    burst: int | None = Field(default=None, ge=1)


class DomainOverride(BaseModel):
    """``EDGE_DOMAIN_POLICIES`` entry: ``{"host": {"cors": {...}, "headers": {...},
    "rate_limit": {...}}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cors: CorsOverride | None = None
    headers: HeadersOverride | None = None
    rate_limit: RateOverride | None = None


_OVERRIDES: TypeAdapter[dict[str, DomainOverride]] = TypeAdapter(dict[str, DomainOverride])


class EdgeSettings(ServiceSettings):
    port: int = Field(default=8083, ge=0, le=65535, validation_alias="PORT")
    https_port: int = Field(default=8443, ge=0, le=65535, validation_alias="EDGE_HTTPS_PORT")
    public_https_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        validation_alias="EDGE_PUBLIC_HTTPS_PORT",
        description="port written into HTTPS redirects (default: EDGE_HTTPS_PORT)",
    )
    https_redirect: bool = Field(
        default=True,
        validation_alias="EDGE_HTTPS_REDIRECT",
        description="308 plain-HTTP requests to HTTPS for hosts that have a certificate",
    )
    load_balancer_url: str = Field(
        default="http://127.0.0.1:8082", validation_alias="LOAD_BALANCER_URL"
    )
    operator_url: str | None = Field(default=None, validation_alias="OPERATOR_URL")
    operator_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ZEITWORK_PROXY_TOKEN", "OPERATOR_TOKEN"),
        description="a proxy-scoped token (OPERATOR_TOKEN: the former name, still read)",
    )

    tls_mode: TlsMode | None = Field(default=None, validation_alias="EDGE_TLS_MODE")
    ssl_cert_path: Path | None = Field(default=None, validation_alias="SSL_CERT_PATH")
    ssl_key_path: Path | None = Field(default=None, validation_alias="SSL_KEY_PATH")
    domains: str = Field(
        default="", validation_alias="EDGE_DOMAINS", description="comma-separated host names"
    )
    default_domain: str | None = Field(
        default=None,
        validation_alias="EDGE_DEFAULT_DOMAIN",
        description="whose certificate TLS clients without SNI (or naming an unknown host) get",
    )
    acme_directory: str = Field(
        default="https://acme-v02.api.letsencrypt.org/directory",
        validation_alias="EDGE_ACME_DIRECTORY",
    )
    acme_ca_bundle: Path | None = Field(default=None, validation_alias="EDGE_ACME_CA_BUNDLE")
    acme_email: str | None = Field(default=None, validation_alias="EDGE_ACME_EMAIL")
    acme_challenge: ChallengeType = Field(default="http-01", validation_alias="EDGE_ACME_CHALLENGE")
    acme_retry_base: float = Field(default=60.0, gt=0, validation_alias="EDGE_ACME_RETRY_BASE")
    cert_check_interval: float = Field(
        default=30.0, gt=0, validation_alias="EDGE_CERT_CHECK_INTERVAL"
    )

    # per client address; high enough for a browser on HTTP/2 or a benchmark against a fresh
    # app (docs/edge-proxy.md, "Limits"), low enough to stop one address flooding an app
    rate_limit_rps: float = Field(default=1000.0, gt=0, validation_alias="RATE_LIMIT_RPS")
    rate_limit_burst: int | None = Field(default=None, ge=1, validation_alias="RATE_LIMIT_BURST")
    rate_limit_capacity: int = Field(
        default=200_000, ge=1, validation_alias="EDGE_RATE_LIMIT_CAPACITY"
    )
    domain_rate_limits: str = Field(
        default="",
        validation_alias="EDGE_DOMAIN_RATE_LIMITS",
        description="per-domain overrides: host=rps:burst,host2=rps:burst",
    )

    domain_policies: str = Field(
        default="",
        validation_alias="EDGE_DOMAIN_POLICIES",
        description="JSON: per-domain CORS, security headers and rate limit",
    )

    cors_origins: str = Field(default="", validation_alias="EDGE_CORS_ORIGINS")
    cors_methods: str = Field(
        default="GET,HEAD,POST,PUT,PATCH,DELETE,OPTIONS", validation_alias="EDGE_CORS_METHODS"
    )
    cors_headers: str = Field(default="", validation_alias="EDGE_CORS_HEADERS")
    cors_expose_headers: str = Field(default="", validation_alias="EDGE_CORS_EXPOSE_HEADERS")
    cors_credentials: bool = Field(default=False, validation_alias="EDGE_CORS_CREDENTIALS")
    cors_max_age: int = Field(default=600, ge=0, validation_alias="EDGE_CORS_MAX_AGE")

    hsts_max_age: int = Field(default=31_536_000, ge=0, validation_alias="EDGE_HSTS_MAX_AGE")
    hsts_include_subdomains: bool = Field(
        default=False, validation_alias="EDGE_HSTS_INCLUDE_SUBDOMAINS"
    )
    frame_options: str = Field(default="SAMEORIGIN", validation_alias="EDGE_FRAME_OPTIONS")
    referrer_policy: str = Field(
        default="strict-origin-when-cross-origin", validation_alias="EDGE_REFERRER_POLICY"
    )
    permissions_policy: str = Field(
        default="camera=(), microphone=(), geolocation=()",
        validation_alias="EDGE_PERMISSIONS_POLICY",
    )
    content_security_policy: str = Field(default="", validation_alias="EDGE_CSP")
    header_override: str = Field(default="", validation_alias="EDGE_HEADER_OVERRIDE")

    trusted_proxies: str = Field(default="", validation_alias="EDGE_TRUSTED_PROXIES")
    proxy_protocol: bool = Field(
        default=False,
        validation_alias="EDGE_PROXY_PROTOCOL",
        description="expect a PROXY v1/v2 header from trusted proxies (plain HTTP, and before TLS)",
    )
    header_timeout: float = Field(default=10.0, gt=0, validation_alias="EDGE_HEADER_TIMEOUT")
    handshake_timeout: float = Field(default=10.0, gt=0, validation_alias="EDGE_HANDSHAKE_TIMEOUT")
    idle_timeout: float = Field(default=75.0, gt=0, validation_alias="EDGE_IDLE_TIMEOUT")
    first_byte_timeout: float = Field(
        default=60.0, gt=0, validation_alias="EDGE_FIRST_BYTE_TIMEOUT"
    )
    stream_idle_timeout: float = Field(
        default=60.0, gt=0, validation_alias="EDGE_STREAM_IDLE_TIMEOUT"
    )
    tunnel_idle_timeout: float = Field(
        default=3600.0, gt=0, validation_alias="EDGE_TUNNEL_IDLE_TIMEOUT"
    )
    connect_timeout: float = Field(default=3.0, gt=0, validation_alias="EDGE_CONNECT_TIMEOUT")
    max_body: int = Field(default=1024**3, ge=0, validation_alias="EDGE_MAX_BODY")
    max_connections_per_ip: int = Field(
        default=1024, ge=1, validation_alias="EDGE_MAX_CONNECTIONS_PER_IP"
    )
    max_connections: int = Field(default=20_000, ge=1, validation_alias="EDGE_MAX_CONNECTIONS")
    admin_host: str = Field(default="127.0.0.1", validation_alias="EDGE_ADMIN_HOST")
    admin_port: int = Field(default=9083, ge=0, le=65535, validation_alias="EDGE_ADMIN_PORT")
    workers: int = Field(default=1, ge=0, validation_alias="EDGE_WORKERS")
    drain_timeout: float = Field(default=20.0, ge=0, validation_alias="EDGE_DRAIN_TIMEOUT")
    handoff_timeout: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        validation_alias="EDGE_HANDOFF_TIMEOUT",
        description="seconds SIGTERM waits for a successor on the same ports before closing them",
    )

    http2: bool = Field(
        default=True,
        validation_alias="EDGE_HTTP2",
        description="offer ALPN h2 before http/1.1 on TLS (off: http/1.1 only)",
    )
    h2c: bool = Field(
        default=False,
        validation_alias="EDGE_H2C",
        description="HTTP/2 with prior knowledge (h2c) on the plain-HTTP port",
    )
    h2_max_streams: int = Field(
        default=100, ge=1, le=10_000, validation_alias="EDGE_H2_MAX_STREAMS"
    )
    h2_max_header_list: int = Field(
        default=65_536, ge=1024, le=1024 * 1024, validation_alias="EDGE_H2_MAX_HEADER_LIST"
    )
    h2_stream_window: int = Field(
        default=1024 * 1024, ge=65_535, le=2**31 - 1, validation_alias="EDGE_H2_STREAM_WINDOW"
    )
    h2_connection_window: int = Field(
        default=16 * 1024 * 1024,
        ge=65_535,
        le=2**31 - 1,
        validation_alias="EDGE_H2_CONNECTION_WINDOW",
    )
    h2_max_resets: int = Field(
        default=200,
        ge=1,
        validation_alias="EDGE_H2_MAX_RESETS",
        description="RST_STREAMs a client may send per 10 s before GOAWAY(ENHANCE_YOUR_CALM)",
    )

    @field_validator("domain_policies")
    @classmethod
    def _domain_policies(cls, value: str) -> str:
        if value.strip():
            try:
                _OVERRIDES.validate_json(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first.get("loc", ()))
                raise ValueError(
                    f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
                ) from None
        return value

    @property
    def domain_overrides(self) -> dict[str, DomainOverride]:
        return (
            _OVERRIDES.validate_json(self.domain_policies) if self.domain_policies.strip() else {}
        )

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        parse_networks(value)  # raises ValueError naming the bad entry
        return value

    @field_validator("load_balancer_url")
    @classmethod
    def _lb_url(cls, value: str) -> str:
        if not value.startswith("http://"):
            raise ValueError("must be an http:// URL like http://127.0.0.1:8082")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _consistent(self) -> EdgeSettings:
        if (self.ssl_cert_path is None) != (self.ssl_key_path is None):
            raise ValueError("SSL_CERT_PATH and SSL_KEY_PATH must be set together")
        if self.effective_tls_mode == "static" and self.ssl_cert_path is None:
            raise ValueError("EDGE_TLS_MODE=static needs SSL_CERT_PATH and SSL_KEY_PATH")
        if self.operator_url and self.operator_token is None:
            raise ValueError("ZEITWORK_PROXY_TOKEN is required when OPERATOR_URL is set")
        return self

    @property
    def effective_tls_mode(self) -> TlsMode:
        if self.tls_mode is not None:
            return self.tls_mode
        if self.ssl_cert_path is not None:
            return "static"
        return "internal"

    @property
    def burst(self) -> int:
        return self.rate_limit_burst or max(1, round(self.rate_limit_rps * 2))

    @property
    def worker_count(self) -> int:
        return self.workers or (os.cpu_count() or 1)

    @property
    def redirect_port(self) -> int:
        return self.public_https_port or self.https_port
