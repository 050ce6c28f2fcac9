"""The runtime driver seam: one small protocol, a registry, and the data it moves.

A driver turns an ``InstanceSpec`` (an unpacked image plus limits, env and a network
attachment) into a running workload and back. Drivers persist nothing themselves: ``start``
returns a ``Handle`` (JSON-serialisable driver state) that the agent stores atomically, and
``recover`` is given the stored handles after an agent restart.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

DriverName = Literal["oci", "firecracker"]
DriverChoice = Literal["auto", "oci", "firecracker"]
DriverKind = Literal["oci", "firecracker", "fake"]
"""Every driver's name: the production ones (``DriverName``) and the test double
(``runtime/fake.py``), which a node's settings cannot choose."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """How the workload's main process runs (from the image config, env merged)."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str = "/"
    user: str = "0:0"  # "uid:gid" resolved against the image's /etc/passwd by the agent


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    """Where the instance lives on the node bridge (IPAM decides, the driver plumbs)."""

    bridge: str
    address: str  # e.g. "10.88.0.5"
    prefix_len: int  # e.g. 24
    gateway: str  # the bridge's address
    mac: str | None = None
    netns: str | None = None  # path of the network namespace prepared for the instance (oci)


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    instance_id: uuid.UUID
    image_digest: str
    rootfs: Path  # the unpacked, read-only image tree (shared by instances of one digest)
    process: ProcessSpec
    vcpu: float
    memory_mib: int
    port: int
    network: NetworkAttachment
    pids_limit: int = 1024
    hostname: str | None = None
    # when not empty: the image's read-only layer directories, top first (the node's layer
    # store, shared by every image holding them), and rootfs is an empty directory
    layers: tuple[Path, ...] = ()


class Phase(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    MISSING = "missing"  # nothing of it is left on the host


@dataclass(frozen=True, slots=True)
class Handle:
    """Driver state for one instance; ``data`` must be JSON-serialisable."""

    instance_id: uuid.UUID
    driver: DriverKind
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Status:
    phase: Phase
    pid: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Recovered:
    """Outcome of ``recover``: handles still running, and what was cleaned up."""

    running: Sequence[Handle]
    cleaned: Sequence[str]


class Driver(Protocol):
    """What every runtime driver offers. All methods are safe to call twice."""

    @property
    def name(self) -> DriverKind: ...

    async def start(self, spec: InstanceSpec) -> Handle:
        """Create and start the workload; on failure undo every step and raise
        ``zeitwork.core.errors.RuntimeFailure`` with the runtime's message."""
        ...

    async def inspect(self, handle: Handle) -> Status: ...

    async def stop(self, handle: Handle, *, grace_seconds: float = 10.0) -> Status:
        """Ask politely (SIGTERM / Ctrl-Alt-Del), then kill after ``grace_seconds``."""
        ...

    async def destroy(self, handle: Handle) -> None:
        """Remove everything the instance left on the host (idempotent)."""
        ...

    def logs(self, handle: Handle, *, tail: int = 100, follow: bool = False) -> AsyncIterator[str]:
        """Lines the workload wrote to stdout and stderr."""
        ...

    async def recover(self, handles: Sequence[Handle]) -> Recovered:
        """After an agent restart: keep what still runs, clean what is dead or stray."""
        ...


LogStream = Literal["stdout", "stderr"]


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of a workload's output as its driver recorded it."""

    text: str
    stream: LogStream = "stdout"
    ts: str | None = None
    """When it was written: RFC 3339 in UTC with nanoseconds (``...T09:30:01.123456789Z``);
    None when the driver did not record it (a file written before timestamps)."""
    partial: bool = False
    """The line goes on in the next entry (it was longer than the driver's piece size, or
    it was unfinished for a while)."""


@runtime_checkable
class SupportsLogEntries(Protocol):
    """Optional: output as entries with stream and write time (``logs`` gives text only)."""

    def log_entries(
        self, handle: Handle, *, tail: int = 100, follow: bool = False
    ) -> AsyncIterator[LogEntry]: ...


@runtime_checkable
class SupportsHousekeeping(Protocol):
    """Optional: periodic upkeep a driver wants (log rotation, reaping); the agent calls it."""

    async def housekeeping(self, handles: Sequence[Handle]) -> None: ...
