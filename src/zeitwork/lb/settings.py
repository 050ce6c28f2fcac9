"""Load balancer configuration (environment variables, validated once at start-up)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator

from zeitwork.proxy.backends import parse_address
from zeitwork.proxy.balancing import AlgorithmName
from zeitwork.proxy.headers import parse_networks
from zeitwork.settings import ServiceSettings
from zeitwork.wire.proxy_stats import LB_ID_PATTERN


class LBSettings(ServiceSettings):
    port: int = Field(default=8082, ge=0, le=65535, validation_alias="PORT")
    operator_url: str | None = Field(default=None, validation_alias="OPERATOR_URL")
    token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ZEITWORK_PROXY_TOKEN", "ZEITWORK_LB_TOKEN"),
        description="a proxy-scoped token (ZEITWORK_LB_TOKEN: the former name, still read)",
    )
    algorithm: AlgorithmName = Field(default="round-robin", validation_alias="LB_ALGORITHM")
    backends: str = Field(
        default="", validation_alias="LB_BACKENDS", description="static default pool host:port,..."
    )
    health_path: str | None = Field(
        default=None,
        validation_alias="LB_HEALTH_PATH",
        description="static backends only: GET this path as their check (unset: tcp connect); "
        "routes from the operator use their release's own check",
    )
    health_interval: float = Field(
        default=2.0, gt=0, le=3600, validation_alias="LB_HEALTH_INTERVAL"
    )
    health_timeout: float = Field(default=1.0, gt=0, le=60, validation_alias="LB_HEALTH_TIMEOUT")
    health_rise: int = Field(default=2, ge=1, le=100, validation_alias="LB_HEALTH_RISE")
    health_fall: int = Field(default=2, ge=1, le=100, validation_alias="LB_HEALTH_FALL")
    eject_failures: int = Field(default=5, ge=1, le=1000, validation_alias="LB_EJECT_FAILURES")
    eject_seconds: float = Field(default=5.0, gt=0, validation_alias="LB_EJECT_SECONDS")
    eject_max_seconds: float = Field(default=120.0, gt=0, validation_alias="LB_EJECT_MAX_SECONDS")
    connect_timeout: float = Field(default=3.0, gt=0, validation_alias="LB_CONNECT_TIMEOUT")
    header_timeout: float = Field(default=10.0, gt=0, validation_alias="LB_HEADER_TIMEOUT")
    idle_timeout: float = Field(default=75.0, gt=0, validation_alias="LB_IDLE_TIMEOUT")
    first_byte_timeout: float = Field(
        default=60.0,
        gt=0,
        validation_alias=AliasChoices("LB_FIRST_BYTE_TIMEOUT", "LB_REQUEST_TIMEOUT"),
        description="request forwarded -> response head begins (LB_REQUEST_TIMEOUT: former name)",
    )
    stream_idle_timeout: float = Field(
        default=60.0, gt=0, validation_alias="LB_STREAM_IDLE_TIMEOUT"
    )
    tunnel_idle_timeout: float = Field(
        default=3600.0, gt=0, validation_alias="LB_TUNNEL_IDLE_TIMEOUT"
    )
    drain_timeout: float = Field(default=30.0, ge=0, validation_alias="LB_DRAIN_TIMEOUT")
    tunnel_drain_timeout: float = Field(
        default=25.0,
        ge=0,
        le=3600,
        validation_alias="LB_TUNNEL_DRAIN_TIMEOUT",
        description="seconds a WebSocket or other upgraded connection runs on once its backend "
        "drains; then a WebSocket gets close code 1001 (keep it below the release's drain)",
    )
    handoff_timeout: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        validation_alias="LB_HANDOFF_TIMEOUT",
        description="seconds SIGTERM waits for a successor on the same port before closing it",
    )
    routes_wait: float = Field(
        default=10.0,
        ge=0,
        le=300,
        validation_alias="LB_ROUTES_WAIT",
        description="with OPERATOR_URL and no cached table: seconds a starting worker waits "
        "for the first route table before it accepts connections",
    )
    max_body: int = Field(
        default=1024 * 1024 * 1024, ge=0, validation_alias="LB_MAX_BODY", description="0: none"
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, le=256, validation_alias="LB_WORKERS"
    )
    trusted_proxies: str = Field(default="", validation_alias="LB_TRUSTED_PROXIES")
    admin_host: str = Field(default="127.0.0.1", validation_alias="LB_ADMIN_HOST")
    admin_port: int = Field(default=9082, ge=0, le=65535, validation_alias="LB_ADMIN_PORT")
    watch_wait: float = Field(default=30.0, ge=1, le=60, validation_alias="LB_WATCH_WAIT")
    full_refresh: float = Field(default=60.0, gt=0, validation_alias="LB_FULL_REFRESH")
    cache_file: Path | None = Field(default=None, validation_alias="LB_CACHE_FILE")
    stats_push_interval: float = Field(
        default=5.0,
        ge=0,
        le=60,
        validation_alias="LB_STATS_PUSH_INTERVAL",
        description="seconds between pushes of /stats/routes to the operator; 0: off",
    )
    lb_id: str | None = Field(
        default=None,
        pattern=LB_ID_PATTERN,
        validation_alias="LB_ID",
        description="this balancer's id in pushed stats (unset: made once, kept in data dir)",
    )

    @field_validator("backends")
    @classmethod
    def _check_backends(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                parse_address(item)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted(cls, value: str) -> str:
        parse_networks(value)
        return value

    @field_validator("health_path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith("/") or any(c in value for c in " \r\n"):
            raise ValueError("must start with / and contain no spaces")
        return value

    @model_validator(mode="after")
    def _check_operator(self) -> LBSettings:
        if self.operator_url and not self.token:
            raise ValueError("ZEITWORK_PROXY_TOKEN is required when OPERATOR_URL is set")
        return self

    @property
    def backend_list(self) -> list[str]:
        return [item.strip() for item in self.backends.split(",") if item.strip()]

    @property
    def route_cache(self) -> Path:
        return self.cache_file or self.data_dir / "lb" / "routes.json"

    @property
    def id_file(self) -> Path:
        return self.data_dir / "lb" / "id"
