"""The operator's configuration, read once at start-up (``load_settings``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from zeitwork.operator.scheduler.subnets import SubnetPool
from zeitwork.settings import ServiceEnvironment, ServiceSettings

MIB = 1024 * 1024


class OperatorSettings(ServiceSettings):
    """Variables of ``zeitwork operator`` (and of ``migrate`` / ``token``)."""

    port: int = Field(default=8080, ge=0, le=65535, validation_alias="PORT")
    database_url: SecretStr | None = Field(default=None, validation_alias="DATABASE_URL")
    auto_migrate: bool | None = Field(
        default=None,
        validation_alias="ZEITWORK_AUTO_MIGRATE",
        description="migrate to head on start; default true in development, false otherwise",
    )
    admin_token: SecretStr | None = Field(default=None, validation_alias="ZEITWORK_ADMIN_TOKEN")
    json_max_bytes: int = Field(default=MIB, ge=1024, validation_alias="ZEITWORK_JSON_MAX_BYTES")
    image_max_bytes: int = Field(
        default=2 * 1024 * MIB, ge=MIB, validation_alias="ZEITWORK_IMAGE_MAX_BYTES"
    )
    build_context_max_bytes: int = Field(
        default=200 * MIB,
        ge=1024,
        validation_alias="ZEITWORK_BUILD_CONTEXT_MAX_BYTES",
        description="the largest build context (tarball) a user may upload",
    )
    build_lease_seconds: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        validation_alias="ZEITWORK_BUILD_LEASE_SECONDS",
        description="how long a builder holds a build job without renewing its lease",
    )
    insecure_registries: str = Field(
        default="",
        validation_alias="ZEITWORK_INSECURE_REGISTRIES",
        description="comma-separated host[:port] of registries reached over plain HTTP "
        "(loopback registries always are)",
    )
    registry_ca_bundle: Path | None = Field(
        default=None,
        validation_alias="ZEITWORK_REGISTRY_CA_BUNDLE",
        description="PEM file of CAs trusted for registries besides the system store",
    )
    registry_url: str = Field(
        default="",
        validation_alias="ZEITWORK_REGISTRY_URL",
        description="the platform registry every imported image is pushed to "
        "([http://|https://]host[:port][/prefix]); empty: images stay in the data dir",
    )
    registry_username: str = Field(default="", validation_alias="ZEITWORK_REGISTRY_USERNAME")
    registry_password: SecretStr | None = Field(
        default=None,
        validation_alias="ZEITWORK_REGISTRY_PASSWORD",
        description="the operator's push credentials for ZEITWORK_REGISTRY_URL",
    )
    registry_pull_username: str = Field(
        default="", validation_alias="ZEITWORK_REGISTRY_PULL_USERNAME"
    )
    registry_pull_password: SecretStr | None = Field(
        default=None,
        validation_alias="ZEITWORK_REGISTRY_PULL_PASSWORD",
        description="a read-only account handed to nodes when the platform registry asks "
        "for basic credentials (a token registry gets nodes short-lived pull tokens instead)",
    )
    events_max_age: float = Field(
        default=7 * 86400.0,
        gt=0,
        le=10 * 365 * 86400.0,
        validation_alias="ZEITWORK_EVENTS_MAX_AGE",
        description="seconds an event is kept (default 7 days)",
    )
    events_max_count: int = Field(
        default=100_000,
        ge=1,
        le=100_000_000,
        validation_alias="ZEITWORK_EVENTS_MAX_COUNT",
        description="events kept at most (the oldest beyond it are pruned)",
    )
    node_heartbeat_timeout: float = Field(
        default=30.0, gt=0, le=3600, validation_alias="ZEITWORK_NODE_HEARTBEAT_TIMEOUT"
    )
    reschedule_after: float = Field(
        default=60.0,
        ge=0,
        le=86400,
        validation_alias="ZEITWORK_RESCHEDULE_AFTER",
        description="seconds a node stays down before its instances are replaced elsewhere "
        "(more than the heartbeat timeout); 0: never",
    )
    instance_network: str = Field(
        default="10.88.0.0/16",
        validation_alias="ZEITWORK_INSTANCE_NETWORK",
        description="pool of node instance subnets (IPv4 CIDR); empty: allocate none",
    )
    node_subnet_prefix: int = Field(
        default=24,
        ge=8,
        le=29,
        validation_alias="ZEITWORK_NODE_SUBNET_PREFIX",
        description="size of each node's subnet from the pool",
    )
    db_pool_min: int = Field(default=2, ge=1, le=100, validation_alias="ZEITWORK_DB_POOL_MIN")
    db_pool_max: int = Field(default=10, ge=1, le=200, validation_alias="ZEITWORK_DB_POOL_MAX")
    db_timeout: float = Field(
        default=5.0,
        gt=0,
        le=120,
        validation_alias="ZEITWORK_DB_TIMEOUT",
        description="seconds to wait for a database connection before answering 503",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        validation_alias="ZEITWORK_WORKERS",
        description="HTTP worker processes sharing PORT (SO_REUSEPORT)",
    )
    token_cache_seconds: float = Field(
        default=5.0, ge=0, le=300, validation_alias="ZEITWORK_TOKEN_CACHE_SECONDS"
    )
    secrets_key: SecretStr | None = Field(
        default=None,
        validation_alias="ZEITWORK_SECRETS_KEY",
        description="Fernet key (urlsafe base64 of 32 bytes) that encrypts app secrets at "
        "rest; unset: one made once in the data dir (secrets.key, mode 0600)",
    )
    reconcile_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        validation_alias="ZEITWORK_RECONCILE_INTERVAL",
        description="seconds between passes of the reconcile loop (changes wake it sooner)",
    )
    dns_servers: str = Field(
        default="",
        validation_alias="ZEITWORK_DNS_SERVERS",
        description="resolvers for domain verification (ip[:port],...); empty: /etc/resolv.conf",
    )

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, value: str) -> str:
        if value.strip():
            from zeitwork.core.errors import InvalidInput
            from zeitwork.images.platform_registry import parse_registry_url

            try:
                parse_registry_url(value)
            except InvalidInput as exc:
                raise ValueError(exc.detail) from None
        return value.strip()

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers(cls, value: str) -> str:
        parse_dns_servers(value)
        return value

    @field_validator("instance_network")
    @classmethod
    def _network(cls, value: str) -> str:
        if not value.strip():
            return ""
        return str(ipaddress.IPv4Network(value.strip(), strict=True))

    @field_validator("reschedule_after")
    @classmethod
    def _reschedule_after_timeout(cls, value: float, info: ValidationInfo) -> float:
        timeout = info.data.get("node_heartbeat_timeout")
        if timeout is not None and 0 < value <= timeout:
            raise ValueError(
                f"must be more than ZEITWORK_NODE_HEARTBEAT_TIMEOUT ({timeout:g}), or 0 to "
                "never reschedule"
            )
        return value

    @field_validator("node_subnet_prefix")
    @classmethod
    def _prefix_fits(cls, value: int, info: ValidationInfo) -> int:
        network = info.data.get("instance_network")
        if network and value < ipaddress.IPv4Network(network).prefixlen:
            raise ValueError(f"must be at least the prefix length of {network}")
        return value

    @property
    def subnet_pool(self) -> SubnetPool | None:
        if not self.instance_network:
            return None
        return SubnetPool(
            network=ipaddress.IPv4Network(self.instance_network), prefix=self.node_subnet_prefix
        )

    @property
    def migrate_on_start(self) -> bool:
        if self.auto_migrate is not None:
            return self.auto_migrate
        return self.environment is ServiceEnvironment.DEVELOPMENT


def parse_dns_servers(text: str) -> list[tuple[str, int]]:
    """``"10.0.0.2, 10.0.0.3:5353"`` -> [(ip, port), ...]; empty: the system's resolvers."""
    servers = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith("["):  # [2001:db8::53]:5353 or [2001:db8::53]
            host, _, rest = item[1:].partition("]")
            port = int(rest[1:]) if rest.startswith(":") else 53
        elif item.count(":") == 1:  # 10.0.0.2:5353
            host, _, number = item.partition(":")
            port = int(number)
        else:  # 10.0.0.2 or a bare IPv6 address
            host, port = item, 53
        ipaddress.ip_address(host)  # ValueError for anything that is not an address
        if not 0 < port < 65536:
            raise ValueError(f"port out of range in {item!r}")
        servers.append((host, port))
    return servers
