"""The node agent's configuration, read once at start-up (``load_settings(AgentSettings)``)."""

from __future__ import annotations

import ipaddress
import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from zeitwork.runtime.base import DriverChoice
from zeitwork.settings import ServiceSettings

DEFAULT_BRIDGE = "zwbr0"
DEFAULT_NODE_SUBNET = "10.88.0.0/24"
"""The node subnet of an agent without an operator and without ZEITWORK_NODE_SUBNET."""


def nft_table_for(bridge: str) -> str:
    """The agent's nftables table when ZEITWORK_NFT_TABLE is unset: named after its bridge
    (``zeitwork`` for the default bridge, as before)."""
    return "zeitwork" if bridge == DEFAULT_BRIDGE else "zeitwork_" + bridge.replace("-", "_")


class AgentSettings(ServiceSettings):
    port: int = Field(default=8081, ge=0, le=65535, validation_alias="PORT")
    operator_url: str | None = Field(default=None, validation_alias="OPERATOR_URL")
    join_token: SecretStr | None = Field(default=None, validation_alias="ZEITWORK_JOIN_TOKEN")
    agent_token: SecretStr | None = Field(
        default=None,
        validation_alias="ZEITWORK_AGENT_TOKEN",
        description="an extra admin token for the agent API (besides the node credential)",
    )
    advertise_url: str | None = Field(
        default=None,
        validation_alias="ZEITWORK_AGENT_ADVERTISE_URL",
        description="where the operator reaches this agent's API (sent at registration); "
        "unset: http://<node ip>:<port the agent listens on>",
    )
    node_id: uuid.UUID | None = Field(default=None, validation_alias="NODE_ID")
    node_ip: str | None = Field(default=None, validation_alias="NODE_IP")
    node_hostname: str | None = Field(default=None, validation_alias="NODE_HOSTNAME")
    region_id: uuid.UUID | None = Field(default=None, validation_alias="ZEITWORK_REGION_ID")

    runtime: DriverChoice = Field(default="auto", validation_alias="ZEITWORK_RUNTIME")
    firecracker_bin: Path | None = Field(default=None, validation_alias="FIRECRACKER_BIN")
    jailer_bin: Path | None = Field(default=None, validation_alias="JAILER_BIN")
    firecracker_kernel: Path | None = Field(default=None, validation_alias="FIRECRACKER_KERNEL")
    vm_work_dir: Path = Field(default=Path("/srv/jailer"), validation_alias="VM_WORK_DIR")
    oci_runtime: Literal["runc", "crun"] = Field(
        default="runc", validation_alias="ZEITWORK_OCI_RUNTIME"
    )
    run_dir: Path = Field(default=Path("/run/zeitwork"), validation_alias="ZEITWORK_RUN_DIR")
    cgroup_parent: str = Field(
        default="zeitwork", pattern=r"^[A-Za-z0-9_.-]+$", validation_alias="ZEITWORK_CGROUP_PARENT"
    )

    bridge: str = Field(
        default=DEFAULT_BRIDGE,
        pattern=r"^[A-Za-z0-9_-]{1,15}$",
        validation_alias="ZEITWORK_BRIDGE",
    )
    node_subnet: str | None = Field(
        default=None,
        validation_alias="ZEITWORK_NODE_SUBNET",
        description="this node's instance subnet; unset: the one the operator allocates "
        f"(without an operator, {DEFAULT_NODE_SUBNET})",
    )
    peer_routes: str = Field(
        default="",
        validation_alias="ZEITWORK_PEER_ROUTES",
        description="other nodes' subnets: SUBNET=NODE_IP, comma separated",
    )
    nft_table: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_]{1,32}$",
        validation_alias="ZEITWORK_NFT_TABLE",
        description="the nftables table the agent owns; unset: one named after the bridge "
        "(``zeitwork`` for the default bridge zwbr0), so agents on different bridges of "
        "one host never replace each other's rules",
    )
    egress_nat: bool = Field(default=True, validation_alias="ZEITWORK_EGRESS_NAT")

    reserved_vcpu: float = Field(default=0.5, ge=0, validation_alias="ZEITWORK_RESERVED_VCPU")
    reserved_memory_mib: int = Field(
        default=512, ge=0, validation_alias="ZEITWORK_RESERVED_MEMORY_MIB"
    )
    reserved_disk_mib: int = Field(
        default=2048, ge=0, validation_alias="ZEITWORK_RESERVED_DISK_MIB"
    )
    heartbeat_interval: float = Field(
        default=10.0, gt=0, le=300, validation_alias="ZEITWORK_HEARTBEAT_INTERVAL"
    )
    resync_interval: float = Field(
        default=60.0, gt=0, le=3600, validation_alias="ZEITWORK_RESYNC_INTERVAL"
    )
    assignment_wait: int = Field(
        default=30, ge=0, le=60, validation_alias="ZEITWORK_ASSIGNMENT_WAIT"
    )
    image_cache_mib: int = Field(default=10240, gt=0, validation_alias="ZEITWORK_IMAGE_CACHE_MIB")
    instance_log_max_bytes: int = Field(
        default=10 * 1024 * 1024, ge=4096, validation_alias="ZEITWORK_INSTANCE_LOG_MAX_BYTES"
    )
    stop_grace_seconds: float | None = Field(
        default=None,
        ge=0,
        validation_alias="ZEITWORK_STOP_GRACE",
        description="an upper bound on every instance's stop timeout (seconds between SIGTERM "
        "and SIGKILL); unset: each instance's own stop_timeout (10 s unless its release says)",
    )
    max_restarts: int = Field(default=5, ge=0, validation_alias="ZEITWORK_MAX_RESTARTS")
    restart_backoff_seconds: float = Field(
        default=1.0, gt=0, validation_alias="ZEITWORK_RESTART_BACKOFF"
    )
    restart_backoff_max_seconds: float = Field(
        default=60.0, gt=0, validation_alias="ZEITWORK_RESTART_BACKOFF_MAX"
    )

    @field_validator("node_subnet")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        network = ipaddress.IPv4Network(value, strict=True)
        if network.num_addresses < 8:
            raise ValueError("the node subnet must be at least a /29")
        return str(network)

    @field_validator("node_ip")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value

    @field_validator("peer_routes")
    @classmethod
    def _routes(cls, value: str) -> str:
        from zeitwork.agent.network import PeerRoute

        for item in filter(None, (part.strip() for part in value.split(","))):
            PeerRoute.parse(item)
        return value

    @field_validator("nft_table", "stop_grace_seconds", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def nft_table_name(self) -> str:
        return self.nft_table or nft_table_for(self.bridge)

    @field_validator("advertise_url")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/?#]+", value):
            raise ValueError("ZEITWORK_AGENT_ADVERTISE_URL must be http(s)://HOST[:PORT] (no path)")
        return value

    @field_validator("operator_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and value.strip() == "":
            return None
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("OPERATOR_URL must start with http:// or https://")
        return value.rstrip("/") if value else value
