"""Apps, releases, rollouts and events on the admin API (``/api/v1``), shared by the
operator's handlers and ``clients.admin``.

An app is a project; its environments (``production`` by default) each have an ordered
history of releases v1, v2, ... and exactly one current release. Routes (all admin-scoped;
``{project}`` is the project's id or slug; ``?environment=`` defaults to ``production``):

- ``POST /projects/{project}/releases`` (``ReleaseCreate``) -> 201 ``ReleaseOut``: deploy.
- ``GET /projects/{project}/releases`` -> ``list[ReleaseOut]``, newest first (paged).
- ``GET /projects/{project}/releases/{version}`` -> ``ReleaseOut`` with its rollout.
- ``POST /projects/{project}/rollback`` (``RollbackRequest``) -> 201 ``ReleaseOut``.
- ``PUT /projects/{project}/scale`` (``ScaleRequest``) -> 200 ``AppStatus``.
- ``GET /projects/{project}/status`` -> ``AppStatus``.
- ``GET /projects/{project}/env`` -> ``EnvOut``; ``PATCH /projects/{project}/env``
  (``EnvChange``) -> 201 ``ReleaseOut`` (a config change is a new release).
- ``GET /events?project=&rollout_id=&after=&limit=&follow=`` -> ``list[EventOut]`` or, with
  ``follow=true``, Server-Sent Events (``id:`` is the event's ``seq``; ``Last-Event-ID``
  resumes).
- ``POST /nodes/{id}/drain`` / ``POST /nodes/{id}/undrain``.

A second deploy to an environment while a rollout runs supersedes the running one: its
surge instances are stopped, and the new rollout starts from what serves.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from zeitwork.core.states import HealthState, InstanceState, ReleaseState, RolloutState
from zeitwork.wire.common import ResourcesModel
from zeitwork.wire.health import HealthCheck, HealthResult
from zeitwork.wire.routes import MAX_IDLE_SECONDS, MAX_TUNNELS, BackendProtocol

StrategyType = Literal["rolling", "bluegreen", "immediate"]
ReleaseReason = Literal["deploy", "rollback", "config", "migration"]
RestartPolicy = Literal["always", "on-failure", "never"]

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,254}$"
ENVIRONMENT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


def resolve_count(value: int | str, replicas: int, *, round_up: bool) -> int:
    """``max_surge`` / ``max_unavailable`` as a number of instances: an int as it is, a
    percentage of ``replicas`` rounded up (surge) or down (unavailable), as Kubernetes does."""
    if isinstance(value, int):
        return value
    percent = int(value.strip().removesuffix("%"))
    scaled = replicas * percent
    return -(-scaled // 100) if round_up else scaled // 100


class RolloutStrategy(BaseModel):
    """How a release replaces the one before it.

    ``rolling``: up to ``max_surge`` new instances at a time beside the old ones (an int, or
    a percentage of the replicas such as ``"25%"``), at most ``max_unavailable`` old ones
    taken out before their replacements are healthy; a new instance joins the route once
    healthy for ``min_healthy_time`` s, then an old one leaves it, drains up to
    ``drain_timeout`` s and is stopped (SIGTERM, SIGKILL after ``stop_timeout`` s).
    ``bluegreen``: every new instance starts beside the old ones; the route switches in one
    update when all are healthy. ``immediate``: old ones stop first (not zero-downtime).
    ``progress_deadline`` bounds the rollout, ``healthy_deadline`` each new instance; past
    either the release fails and, with ``auto_revert``, the previous release keeps serving.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: StrategyType = "rolling"
    max_surge: int | str = Field(default=1, description="instances, or a percentage like '25%'")
    max_unavailable: int | str = Field(default=0)
    min_healthy_time: float = Field(default=5.0, ge=0, le=3600)
    drain_timeout: float = Field(default=30.0, ge=0, le=3600)
    stop_timeout: float = Field(default=10.0, ge=0, le=3600)
    progress_deadline: float = Field(default=300.0, gt=0, le=86400)
    healthy_deadline: float = Field(default=120.0, gt=0, le=86400)
    auto_revert: bool = True

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _count_or_percent(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if not 0 <= value <= 1000:
                raise ValueError("must be between 0 and 1000")
            return value
        text = value.strip()
        if not text.endswith("%") or not text[:-1].isdigit() or not 0 <= int(text[:-1]) <= 100:
            raise ValueError("must be an integer or a percentage such as '25%'")
        return text


class ReleaseCreate(BaseModel):
    """Body of a deploy. ``image`` is an imported image's id or a registry reference."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, max_length=1000)
    environment: str = Field(default="production", pattern=ENVIRONMENT_PATTERN)
    command: list[str] | None = Field(default=None, max_length=256)
    port: int | None = Field(
        default=None, ge=1, le=65535, description="the app's port; default: the image's, or 8080"
    )
    env: dict[str, str] | None = Field(
        default=None,
        description="environment variables merged over the current release's (None: keep)",
    )
    resources: ResourcesModel | None = None
    replicas: int | None = Field(
        default=None, ge=0, le=1000, description="default: the environment's current count"
    )
    health_check: HealthCheck | None = Field(
        default=None, description="default: the current release's, else tcp on the port"
    )
    backend_protocol: BackendProtocol | None = Field(
        default=None,
        description="how the proxies speak to the app: http1 (HTTP/1.1 keep-alive) or h2c "
        "(HTTP/2 cleartext, prior knowledge: gRPC); default: the current release's, else http1",
    )
    response_idle_timeout: float | None = Field(
        default=None,
        ge=0,
        le=MAX_IDLE_SECONDS,
        allow_inf_nan=False,
        description="seconds a response may stall (before its head and between its reads) "
        "before the load balancers cut it (504 before the head); 1 to 86400, 0: the load "
        "balancers' own timeouts; default: the current release's",
    )
    tunnel_idle_timeout: float | None = Field(
        default=None,
        ge=0,
        le=MAX_IDLE_SECONDS,
        allow_inf_nan=False,
        description="seconds an upgraded connection (WebSocket) may be idle before the load "
        "balancers close it (a WebSocket with close code 1001); 1 to 86400, 0: their own; "
        "default: the current release's",
    )
    max_tunnels: int | None = Field(
        default=None,
        ge=0,
        le=MAX_TUNNELS,
        description="upgraded connections (WebSockets) each load balancer worker holds open on "
        "the app's routes at most, more answered 503 with Retry-After; 0: no limit; default: "
        "the current release's",
    )
    restart_policy: RestartPolicy | None = None
    strategy: RolloutStrategy | None = None
    description: str | None = Field(default=None, max_length=2000)

    @field_validator("response_idle_timeout", "tunnel_idle_timeout")
    @classmethod
    def _whole_seconds(cls, value: float | None) -> float | None:
        if value is not None and 0 < value < 1:
            raise ValueError("at least 1 second (or 0: the load balancers' own timeout)")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            if not re.match(ENV_NAME_PATTERN, name):
                raise ValueError(f"invalid environment variable name {name[:60]!r}")
        return value


class RolloutOut(BaseModel):
    id: uuid.UUID
    release_id: uuid.UUID
    from_release_id: uuid.UUID | None
    strategy: StrategyType
    state: RolloutState
    deadline_at: datetime
    finished_at: datetime | None
    error: str | None
    created_at: datetime


class ReleaseOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    environment: str
    version: int
    image_id: uuid.UUID
    image_digest: str | None
    image_ref: str | None
    command: list[str] | None
    port: int
    backend_protocol: BackendProtocol = "http1"
    response_idle_timeout: float | None = Field(
        default=None, description="seconds (None: the load balancers' own timeouts)"
    )
    tunnel_idle_timeout: float | None = Field(
        default=None, description="seconds (None: the load balancers' own)"
    )
    max_tunnels: int | None = Field(
        default=None, description="per load balancer worker (None: no limit)"
    )
    env: dict[str, str] = Field(description="plain variables (secrets are listed by name)")
    secret_names: list[str]
    resources: ResourcesModel
    replicas: int
    health_check: HealthCheck
    restart_policy: RestartPolicy
    strategy: RolloutStrategy
    reason: ReleaseReason
    description: str | None
    created_by: str | None
    source_release_id: uuid.UUID | None
    state: ReleaseState
    state_changed_at: datetime
    error: str | None
    current: bool
    created_at: datetime
    rollout: RolloutOut | None = None


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str = Field(default="production", pattern=ENVIRONMENT_PATTERN)
    version: int | None = Field(
        default=None, ge=1, le=2_147_483_647, description="default: the previous good release"
    )


class ScaleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    environment: str = Field(default="production", pattern=ENVIRONMENT_PATTERN)
    replicas: int = Field(ge=0, le=1000)


class EnvChange(BaseModel):
    """``set`` plain variables, ``secrets`` (stored encrypted, never shown back), ``unset``
    names; one new release."""

    model_config = ConfigDict(extra="forbid")

    environment: str = Field(default="production", pattern=ENVIRONMENT_PATTERN)
    set: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    unset: list[str] = Field(default_factory=list, max_length=1000)


class EnvOut(BaseModel):
    environment: str
    env: dict[str, str]
    secret_names: list[str]


class InstanceBrief(BaseModel):
    id: uuid.UUID
    node_id: uuid.UUID | None
    release_id: uuid.UUID | None
    version: int | None
    state: InstanceState
    desired_state: str
    health: HealthState
    last_check: HealthResult | None
    serving: bool
    draining: bool
    ip_address: str | None
    port: int | None
    exit_code: int | None
    reason: str | None
    state_changed_at: datetime


class AppStatus(BaseModel):
    project_id: uuid.UUID
    name: str
    slug: str
    environment: str
    replicas: int = Field(description="the desired count")
    current_release: ReleaseOut | None
    rollout: RolloutOut | None = Field(description="the running rollout, if any")
    instances: list[InstanceBrief]
    domains: list[str]
    metrics: dict[str, Any] | None = Field(
        default=None, description="requests/s, error rate, p50/p99 over the last minute"
    )


class EventOut(BaseModel):
    seq: int
    id: uuid.UUID
    created_at: datetime
    project_id: uuid.UUID | None
    project_environment_id: uuid.UUID | None
    release_id: uuid.UUID | None
    rollout_id: uuid.UUID | None
    instance_id: uuid.UUID | None
    node_id: uuid.UUID | None
    kind: str
    level: Literal["info", "warning", "error"]
    message: str
    data: dict[str, Any]
