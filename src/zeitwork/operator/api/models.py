"""Response and request bodies of the operator API resources built here (nodes, tokens,
regions). Other resources keep their models beside their router."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from zeitwork.core.states import NodeState
from zeitwork.operator.db.nodes import Node
from zeitwork.operator.db.regions import Region
from zeitwork.operator.db.tokens import Token
from zeitwork.operator.principal import Scope
from zeitwork.wire.common import CapacityModel, ResourcesModel


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

    @classmethod
    def of(cls, node: Node) -> NodeOut:
        # rows from our own database are already valid: construct without re-validating
        beat = node.heartbeat or None
        return cls.model_construct(
            id=node.id,
            hostname=node.hostname,
            ip_address=node.ip_address,
            region_id=node.region_id,
            state=node.state,
            state_changed_at=node.state_changed_at,
            runtime=node.runtime,
            resources=ResourcesModel.model_construct(
                vcpu=node.vcpu_millis / 1000, memory=node.memory_mib
            ),
            disk=node.disk_mib,
            last_heartbeat_at=node.last_heartbeat_at,
            heartbeat=None if beat is None else NodeHeartbeatOut.model_validate(_pick(beat)),
            created_at=node.created_at,
            updated_at=node.updated_at,
            subnet=node.subnet,
        )


def _pick(beat: dict[str, Any]) -> dict[str, Any]:
    return {k: beat.get(k) for k in ("capacity", "used", "available")}


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

    @classmethod
    def of(cls, token: Token) -> TokenOut:
        return cls(
            id=token.id,
            name=token.name,
            scope=token.scope,
            prefix=token.prefix,
            node_id=token.node_id,
            created_at=token.created_at,
            last_used_at=token.last_used_at,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
        )


class TokenCreated(TokenOut):
    token: str = Field(description="the secret; shown only in this answer")


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

    @classmethod
    def of(cls, region: Region) -> RegionOut:
        return cls(
            id=region.id,
            name=region.name,
            code=region.code,
            country=region.country,
            created_at=region.created_at,
            updated_at=region.updated_at,
        )
