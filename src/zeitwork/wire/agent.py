"""The contract between the operator and its node agents.

Flow: an agent registers with a *join* token (``POST /api/v1/nodes`` with
``NodeRegistration``) and receives a node-scoped credential once (``NodeRegistered``); it
then long-polls its assignments (``GET /api/v1/nodes/{id}/assignments?version=V&wait=S``,
answered with ``Assignments`` as soon as the version differs from V, or after S seconds),
heartbeats (``POST /api/v1/nodes/{id}/heartbeat`` with ``Heartbeat``), reports each instance
transition (``PUT /api/v1/instances/{id}/state`` with ``InstanceStatusReport``) and
downloads images (``GET /api/v1/images/{id}/archive``, an OCI archive; its digest is the
image's ``digest``).

Subnets: the operator records one instance subnet per node (the one the agent declares in
``NodeRegistration.subnet``, else one it allocates) and returns it in
``NodeRegistered.subnet``; ``Assignments.peers`` lists the other serving nodes' subnets,
which the agent routes to via their addresses.
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from zeitwork.core.states import InstanceState
from zeitwork.wire.common import CapacityModel, ResourcesModel
from zeitwork.wire.health import HealthCheck, InstanceHealth

RuntimeName = Literal["oci", "firecracker"]
RestartPolicy = Literal["always", "on-failure", "never"]


class NodeRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID | None = None
    hostname: str = Field(min_length=1, max_length=253)
    ip_address: str
    region_id: uuid.UUID | None = None
    runtime: RuntimeName | None = None
    resources: ResourcesModel
    disk: int | None = Field(default=None, ge=0, description="disk for instances, MiB")
    agent_url: str | None = Field(
        default=None,
        max_length=2000,
        pattern=r"^https?://[^\s/?#]+/?$",
        description="where the operator reaches this agent's API (logs fan-in), e.g. "
        "http://10.0.0.5:8081; None: the operator cannot call this agent",
    )
    agent_token: str | None = Field(
        default=None,
        min_length=32,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="a secret the agent made; the operator sends it as a Bearer token when it "
        "calls the agent (never a user's token)",
    )

    @field_validator("ip_address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        # Other agents route to this address (peer routes) and load balancers connect to
        # instances behind it: it must be an IP address, never a name or garbage.
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError as exc:
            raise ValueError(f"ip_address must be an IPv4 or IPv6 address, got {value!r}") from exc

    subnet: str | None = Field(
        default=None,
        description="the instance subnet the agent already uses (its explicit setting or the "
        "one the operator gave it before); without it the operator allocates one",
    )

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        return None if value is None else str(ipaddress.IPv4Network(value, strict=True))


class NodeRegistered(BaseModel):
    """Answer to a registration made with a join token: the node and its own credential."""

    node_id: uuid.UUID
    node_token: str | None = Field(
        default=None, description="present only when the call used a join token"
    )
    subnet: str | None = Field(
        default=None,
        description="the node's instance subnet as the operator recorded it (None when the "
        "operator allocates none and the agent declared none)",
    )


class ImageRef(BaseModel):
    id: uuid.UUID
    name: str
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    size: int


class AssignedInstance(BaseModel):
    """One instance the operator wants on this node, and in which state."""

    id: uuid.UUID
    desired_state: Literal["running", "stopped", "terminated"]
    image: ImageRef
    resources: ResourcesModel
    default_port: int = Field(ge=1, le=65535)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    restart_policy: RestartPolicy = "always"
    deployment_id: uuid.UUID | None = None
    release_id: uuid.UUID | None = None
    command: list[str] | None = Field(
        default=None, description="overrides the image's entrypoint and command when given"
    )
    health_check: HealthCheck | None = Field(
        default=None,
        description="checks the agent runs beside the instance; None: tcp on default_port",
    )
    stop_timeout: float = Field(
        default=10.0, ge=0, le=3600, description="seconds between SIGTERM and SIGKILL"
    )


class Peer(BaseModel):
    """Another serving node (ready or draining): route ``subnet`` via ``ip_address``."""

    node_id: uuid.UUID
    subnet: str
    ip_address: str


class Assignments(BaseModel):
    node_id: uuid.UUID
    version: int = Field(
        ge=0, description="changes whenever this node's assignment or its peers change"
    )
    instances: list[AssignedInstance]
    peers: list[Peer] = Field(
        default_factory=list, description="the other serving nodes' subnets (peer routes)"
    )


class InstanceStatus(BaseModel):
    """What the agent sees of one instance (in heartbeats and per-transition reports)."""

    id: uuid.UUID
    state: InstanceState
    ip_address: str | None = None
    port: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    reason: str | None = Field(default=None, max_length=4000)
    log_tail: list[str] = Field(default_factory=list, max_length=50)
    health: InstanceHealth | None = Field(
        default=None, description="the agent's checks of this instance (None: not checked)"
    )


class InstanceStatusReport(BaseModel):
    """Body of ``PUT /api/v1/instances/{id}/state`` (admins send only ``state``)."""

    model_config = ConfigDict(extra="forbid")

    state: InstanceState
    ip_address: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    exit_code: int | None = None
    oom_killed: bool = False
    reason: str | None = Field(default=None, max_length=4000)
    log_tail: list[str] = Field(default_factory=list, max_length=50)
    health: InstanceHealth | None = None


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capacity: CapacityModel
    used: CapacityModel
    available: CapacityModel
    instances: list[InstanceStatus] = Field(default_factory=list)
    runtime: RuntimeName | None = None
