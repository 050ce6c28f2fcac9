"""Builder configuration (environment variables, validated once at start-up)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import Field, SecretStr, field_validator

from zeitwork.settings import ServiceSettings


def _default_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:200]


class BuilderSettings(ServiceSettings):
    port: int = Field(
        default=9085,
        ge=0,
        le=65535,
        validation_alias="PORT",
        description="the builder's /health and /metrics listener",
    )
    host: str = Field(default="127.0.0.1", validation_alias="HOST")
    operator_url: str = Field(default="http://127.0.0.1:8080", validation_alias="OPERATOR_URL")
    token: SecretStr | None = Field(
        default=None,
        validation_alias="ZEITWORK_BUILDER_TOKEN",
        description="a builder-scoped token (zeitwork operator token create --scope builder)",
    )
    builder_id: str = Field(
        default_factory=_default_id,
        validation_alias="BUILDER_ID",
        pattern=r"^[A-Za-z0-9._:@-]{1,200}$",
        description="how this builder names itself in leases (default host-pid)",
    )
    work_dir: Path | None = Field(
        default=None,
        validation_alias="BUILDER_WORK_DIR",
        description="sources, layer caches and exports (default: ZEITWORK_DATA_DIR/builder)",
    )
    timeout: float = Field(
        default=900.0,
        gt=0,
        le=24 * 3600,
        validation_alias="BUILDER_TIMEOUT",
        description="wall-clock seconds a build may take before it is killed and failed",
    )
    buildah: str = Field(default="buildah", validation_alias="BUILDER_BUILDAH")
    unshare: str = Field(
        default="unshare",
        validation_alias="BUILDER_UNSHARE",
        description="util-linux unshare: buildah bud runs in PID (and for BUILDER_NETWORK=none "
        "network) namespaces of its own",
    )
    git: str = Field(default="git", validation_alias="BUILDER_GIT")
    storage_driver: str = Field(
        default="vfs",
        pattern=r"^(vfs|overlay)$",
        validation_alias="BUILDER_STORAGE_DRIVER",
        description="buildah's storage driver (vfs works everywhere; overlay is faster where "
        "the kernel allows it)",
    )
    isolation: str = Field(
        default="chroot",
        pattern=r"^(chroot|oci|rootless)$",
        validation_alias="BUILDER_ISOLATION",
    )
    memory_max: str = Field(
        default="",
        pattern=r"^([0-9]+[KMG]?)?$",
        validation_alias="BUILDER_MEMORY_MAX",
        description="a build's memory limit (e.g. 2G), through a transient systemd scope when "
        "systemd-run is there; empty: no limit but the timeout",
    )
    cpu_quota: str = Field(
        default="",
        pattern=r"^([0-9]+%)?$",
        validation_alias="BUILDER_CPU_QUOTA",
        description="a build's CPU limit (e.g. 200% for two cores), like BUILDER_MEMORY_MAX",
    )
    network: str = Field(
        default="host",
        pattern=r"^(host|none)$",
        validation_alias="BUILDER_NETWORK",
        description="the network of a build from the user's Dockerfile: host (the builder "
        "host's, what downloading packages needs) or none (the build runs in a network "
        "namespace with only a loopback: FROM must name a local image); a detected stack's "
        "build always gets host",
    )
    cache_max_size: str = Field(
        default="20G",
        pattern=r"^[0-9]+[KMG]?$",
        validation_alias="BUILDER_CACHE_MAX_SIZE",
        description="all projects' layer caches together (e.g. 20G): over it, between jobs, "
        "the least recently used are trimmed to their newest image, then removed; 0: no cap",
    )
    cache_max_age: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        validation_alias="BUILDER_CACHE_MAX_AGE",
        description="seconds: a project's layer cache not used by a build for this long is "
        "removed between jobs; 0: never for its age",
    )
    poll_wait: float = Field(default=20.0, ge=0, le=30, validation_alias="BUILDER_POLL_WAIT")
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        validation_alias="BUILDER_DRAIN_TIMEOUT",
        description="on SIGTERM: seconds a running build may still finish before it is "
        "stopped and its job handed back",
    )
    base_images: str = Field(
        default="",
        validation_alias="ZEITWORK_BUILD_BASE_IMAGES",
        description="your own base images for detected stacks (python=registry/py:3.12,...); "
        "the others are made once here with mmdebstrap",
    )
    log_flush_seconds: float = Field(default=0.5, gt=0, le=10, validation_alias="BUILDER_LOG_FLUSH")
    ca_bundle: Path | None = Field(
        default=None,
        validation_alias="BUILDER_CA_BUNDLE",
        description="a PEM bundle of the certificate authorities RUN steps should trust (e.g. "
        "the host's /etc/ssl/certs/ca-certificates.crt behind a TLS-intercepting proxy): "
        "mounted read-only at /etc/ssl/certs/zeitwork-ca.pem during RUN steps, never stored "
        "in the image; empty: none",
    )

    @field_validator("ca_bundle", mode="before")
    @classmethod
    def _no_bundle(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("ca_bundle")
    @classmethod
    def _bundle(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        if not value.is_absolute() or any(c in str(value) for c in ":,"):
            raise ValueError("BUILDER_CA_BUNDLE must be an absolute path without ':' or ','")
        if not value.is_file():
            raise ValueError(f"BUILDER_CA_BUNDLE {value} is not a file")
        return value

    @field_validator("operator_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("OPERATOR_URL must be http(s)://host[:port]")
        return value.rstrip("/")

    @property
    def root(self) -> Path:
        return self.work_dir or self.data_dir / "builder"
