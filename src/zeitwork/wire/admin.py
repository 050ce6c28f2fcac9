"""Projects, domains, deployments, images, instances, nodes, tokens, regions and log records
on the admin API (``/api/v1``), shared by the operator's handlers and ``clients.admin``.

Request bodies (``*Create``, ``*Bind``, ``*In``, ``*Change``, ``*Update``) refuse unknown
fields. Answers (``*Out``) are plain models: the operator builds them from its rows in
``operator.api.convert``; the client parses them with ``extra="ignore"`` at validation time
(``clients.admin``), so that an operator that grew a field does not break an older CLI.
States are the enums of ``core.states``; the model and field names are the OpenAPI
document's schema names, so renaming one changes the document.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from zeitwork.core.states import DeploymentState, ImageState, InstanceState, NodeState
from zeitwork.wire.agent import RestartPolicy
from zeitwork.wire.common import CapacityModel, ResourcesModel
from zeitwork.wire.releases import ENV_NAME_PATTERN, ENVIRONMENT_PATTERN
from zeitwork.wire.routes import EdgePolicyOverride, PathRateLimit

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
HOSTNAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)
ENV_NAME = re.compile(ENV_NAME_PATTERN)
MAX_ENV_VARS = 200
MAX_ENV_VALUE = 32 * 1024

DesiredState = Literal["running", "stopped", "terminated"]


class Scope(StrEnum):
    """What a token may do. ``admin`` may do everything."""

    ADMIN = "admin"
    JOIN = "join"  # register a node (and receive that node's own token)
    NODE = "node"  # one node's heartbeats, assignments, instance reports, image downloads
    PROXY = "proxy"  # load balancers and edges: routes, certificates, ACME account, leases
    BUILDER = "builder"  # builders: lease, run and finish build jobs, fetch their contexts


def check_hostname(value: str) -> str:
    """``value`` as a lower-case DNS host name (``*.`` allowed first), or ValueError."""
    host = value.strip().lower().rstrip(".")
    if len(host) > 253 or not HOSTNAME.match(host):
        raise ValueError("must be a DNS host name such as app.example.com")
    return host


def check_environment(env: dict[str, str]) -> dict[str, str]:
    """Names like shell variables, at most 200 of them, values up to 32 KiB, no NUL."""
    if len(env) > MAX_ENV_VARS:
        raise ValueError(f"at most {MAX_ENV_VARS} environment variables")
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if len(value) > MAX_ENV_VALUE or "\x00" in value:
            raise ValueError(f"the value of {name} is longer than 32 KiB or holds a NUL byte")
    return env


# projects


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(default=None, pattern=SLUG, description="default: from the name")
    github_repo: str | None = Field(default=None, max_length=200, pattern=r"^[\w.-]+/[\w.-]+$")
    default_branch: str = Field(default="main", min_length=1, max_length=200)


class ProjectOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    github_repo: str | None
    default_branch: str
    created_at: datetime
    updated_at: datetime


# domains


def _one_binding(
    deployment_id: uuid.UUID | None, environment_id: uuid.UUID | None, environment: str | None
) -> None:
    if sum(x is not None for x in (deployment_id, environment_id, environment)) > 1:
        raise ValueError("give one of deployment_id, project_environment_id, environment")


class DomainCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=253)
    project_id: uuid.UUID
    deployment_id: uuid.UUID | None = None
    project_environment_id: uuid.UUID | None = Field(
        default=None, description="route the host to this environment's current release"
    )
    environment: str | None = Field(
        default=None, pattern=ENVIRONMENT_PATTERN, description="the same, by name (production)"
    )

    @field_validator("name")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_hostname(value)

    @model_validator(mode="after")
    def _one_target(self) -> DomainCreate:
        _one_binding(self.deployment_id, self.project_environment_id, self.environment)
        return self


class DomainBind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment_id: uuid.UUID | None = Field(
        default=None, description="route the host to this deployment (rows from before releases)"
    )
    project_environment_id: uuid.UUID | None = Field(
        default=None, description="route the host to this environment's current release"
    )
    environment: str | None = Field(
        default=None,
        pattern=ENVIRONMENT_PATTERN,
        description="the same, by name in the domain's project; all three null unbinds",
    )

    @model_validator(mode="after")
    def _one_target(self) -> DomainBind:
        _one_binding(self.deployment_id, self.project_environment_id, self.environment)
        return self


class DomainRateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_limit_rps: float | None = Field(
        gt=0, le=1_000_000, description="requests per second per client at the edge; null: global"
    )
    rate_limit_burst: int | None = Field(
        default=None, ge=1, le=1_000_000, description="burst; null: twice the rate (at least 1)"
    )

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> DomainRateLimit:
        if self.rate_limit_burst is not None and self.rate_limit_rps is None:
            raise ValueError("rate_limit_burst needs rate_limit_rps")
        return self


class DomainPathRateLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: list[PathRateLimit] = Field(
        max_length=32, description="per path prefix; [] removes them all"
    )

    @model_validator(mode="after")
    def _distinct_prefixes(self) -> DomainPathRateLimits:
        prefixes = [limit.path_prefix for limit in self.limits]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("each path_prefix may appear once")
        return self


class DnsRecord(BaseModel):
    type: str = "TXT"
    name: str
    value: str


class DomainOut(BaseModel):
    id: uuid.UUID
    name: str
    project_id: uuid.UUID | None
    deployment_id: uuid.UUID | None
    project_environment_id: uuid.UUID | None = None
    verified: bool
    verified_at: datetime | None
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    edge_policy: EdgePolicyOverride | None = None
    path_rate_limits: list[PathRateLimit] = Field(default_factory=list)
    verification_record: DnsRecord | None = Field(
        default=None, description="the TXT record that verifies the domain (until it is verified)"
    )
    created_at: datetime
    updated_at: datetime


# instances and deployments


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: uuid.UUID
    resources: ResourcesModel
    default_port: int = Field(ge=1, le=65535, description="the port the app listens on")
    environment_variables: dict[str, str] = Field(default_factory=dict)
    node_id: uuid.UUID | None = Field(
        default=None, description="run on this node (capacity still checked); else scheduled"
    )
    restart_policy: RestartPolicy = "always"

    @field_validator("environment_variables")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)


class InstanceOut(BaseModel):
    id: uuid.UUID
    node_id: uuid.UUID | None
    image_id: uuid.UUID
    deployment_id: uuid.UUID | None
    state: InstanceState
    desired_state: DesiredState
    state_changed_at: datetime
    resources: ResourcesModel
    default_port: int
    restart_policy: str
    ip_address: str | None
    port: int | None
    exit_code: int | None
    oom_killed: bool
    reason: str | None
    log_tail: list[str]
    environment_variable_names: list[str]
    environment_variables: dict[str, str] | None = Field(
        default=None, description="values only in single-instance answers (may be secrets)"
    )
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: uuid.UUID
    image_id: uuid.UUID
    replicas: int = Field(default=1, ge=0, le=100)
    resources: ResourcesModel
    port: int = Field(ge=1, le=65535, description="the port the app listens on")
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)


class DeploymentOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    image_id: uuid.UUID | None
    state: DeploymentState
    state_changed_at: datetime
    replicas: int
    port: int | None
    resources: ResourcesModel | None
    error: str | None
    instance_ids: list[uuid.UUID] | None = None
    created_at: datetime
    updated_at: datetime


class DeploymentCreated(DeploymentOut):
    instances: list[InstanceOut]


# images


class ImageConfigOut(BaseModel):
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    env: list[str] = Field(default_factory=list)
    working_dir: str | None = None
    user: str | None = None
    exposed_ports: list[str] = Field(default_factory=list)


class ImageOut(BaseModel):
    id: uuid.UUID
    name: str
    status: ImageState
    digest: str | None
    size: int | None
    config: ImageConfigOut
    error: str | None
    location: str | None = Field(
        default=None, description="where the platform registry keeps it (host/repo@digest)"
    )
    created_at: datetime
    updated_at: datetime


class ImageBuild(BaseModel):
    model_config = ConfigDict(extra="forbid")

    github_repo: str = Field(min_length=1, max_length=200)
    commit_sha: str | None = Field(default=None, max_length=64)
    name: str | None = Field(default=None, max_length=255)


class PullGrantOut(BaseModel):
    """How a node pulls an image: from ``location`` in the platform registry (over plain
    HTTP when ``plain_http``) with ``token`` (bearer, good for ``expires_in`` seconds) or
    ``username``/``password`` (a read-only account) or nothing (anonymous); or, when
    ``location`` is null, by downloading ``/images/{id}/archive`` (``reason`` says why)."""

    image_id: uuid.UUID
    digest: str
    location: str | None
    plain_http: bool = False
    token: str | None = None
    username: str | None = None
    password: str | None = None
    expires_in: int | None = None
    reason: str | None = None


class RegistryCredentialIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=255)
    password: SecretStr = Field(min_length=1, max_length=4096)


class RegistryCredentialOut(BaseModel):
    """A stored credential as shown: never its password."""

    registry: str
    username: str
    created_at: datetime
    updated_at: datetime


# nodes


class NodeHeartbeatOut(BaseModel):
    capacity: CapacityModel | None = None
    used: CapacityModel | None = None
    available: CapacityModel | None = None


class NodeOut(BaseModel):
    id: uuid.UUID
    hostname: str
    ip_address: str
    region_id: uuid.UUID | None
    state: NodeState
    state_changed_at: datetime
    runtime: str | None
    resources: ResourcesModel
    disk: int = Field(description="disk for instances, MiB")
    last_heartbeat_at: datetime | None
    heartbeat: NodeHeartbeatOut | None
    created_at: datetime
    updated_at: datetime
    subnet: str | None = Field(default=None, description="the node's instance subnet")


class NodeRegisteredOut(NodeOut):
    """The registered node, plus ``node_id``/``node_token`` (``wire.agent.NodeRegistered``)."""

    node_id: uuid.UUID
    node_token: str | None = Field(
        default=None, description="the node's own credential; only for join-token calls"
    )


class NodeStateChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: NodeState
    expected_state: NodeState | None = Field(
        default=None, description="change only if the node is in this state (else 409)"
    )


# tokens


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope
    name: str = Field(default="", max_length=200)
    node_id: uuid.UUID | None = Field(default=None, description="required for scope 'node'")
    expires_in: int | None = Field(
        default=None,
        ge=60,
        le=10 * 365 * 86400,
        description="lifetime in seconds (none: no expiry)",
    )


class TokenOut(BaseModel):
    id: uuid.UUID
    name: str
    scope: Scope
    prefix: str = Field(description="the token's first characters, to recognise it")
    node_id: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret; shown only in this answer")


# regions


class RegionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    code: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="e.g. eu-central-1")
    country: str | None = Field(default=None, max_length=100)


class RegionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    country: str | None = Field(default=None, max_length=100)


class RegionOut(BaseModel):
    id: uuid.UUID
    name: str
    code: str
    country: str | None
    created_at: datetime
    updated_at: datetime


# logs (``GET /projects/{project}/logs``: NDJSON or SSE records, not in the OpenAPI document)


class LogLine(BaseModel):
    """One line of an app's output, labelled by the operator's fan-in."""

    model_config = ConfigDict(frozen=True)

    ts: datetime
    instance_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = None
    release: str | None = None
    stream: str = "stdout"
    line: str
    partial: bool = False  # goes on in the next line of this instance (a piece of a long one)


class LogNotice(BaseModel):
    """Said inline in a log stream, e.g. ``node X: unreachable, retrying``."""

    model_config = ConfigDict(frozen=True)

    notice: str


LogRecord = LogLine | LogNotice
