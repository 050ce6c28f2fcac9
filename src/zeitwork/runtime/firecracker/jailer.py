"""The jailer's command line and the paths it creates: pure functions, no I/O.

The jailer (from the Firecracker release) builds ``<chroot_base>/<exec_name>/<id>/root``,
puts the process into cgroups, optionally joins a network namespace and a new PID namespace,
drops to ``uid:gid`` and execs firecracker inside the chroot. With ``--new-pid-ns`` the jailer
itself exits after writing firecracker's host PID to ``<root>/<exec_name>.pid``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zeitwork.core.errors import InvalidInput

CgroupVersion = Literal[1, 2]

API_SOCKET = "/run/firecracker.socket"  # inside the chroot
CPU_PERIOD_US = 100_000
_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass(frozen=True, slots=True)
class JailPaths:
    """Where one microVM's jail lives on the host."""

    base: Path  # <chroot_base>/<exec_name>/<id>
    root: Path  # ... /root, seen as "/" by firecracker

    @property
    def api_socket(self) -> Path:
        return self.root / API_SOCKET.lstrip("/")

    @property
    def pid_file(self) -> Path:
        return self.root / f"{self.base.parent.name}.pid"

    def inside(self, name: str) -> str:
        """The path firecracker sees for a file placed at ``root/name``."""
        return "/" + name


def jail_paths(*, chroot_base: Path, firecracker_bin: Path, vm_id: str) -> JailPaths:
    base = chroot_base / firecracker_bin.name / vm_id
    return JailPaths(base=base, root=base / "root")


def cgroup_limits(
    *, version: CgroupVersion, vcpu: float, memory_mib: int, overhead_mib: int
) -> list[tuple[str, str]]:
    """cgroup files the jailer writes for a VM: a CPU quota of ``vcpu`` CPUs and a hard
    memory limit of the guest memory plus the VMM's own overhead."""
    if vcpu <= 0 or memory_mib <= 0:
        raise InvalidInput("vcpu and memory must be positive")
    quota = max(1000, round(vcpu * CPU_PERIOD_US))
    limit = (memory_mib + overhead_mib) * 1024 * 1024
    if version == 2:
        return [("cpu.max", f"{quota} {CPU_PERIOD_US}"), ("memory.max", str(limit))]
    return [
        ("cpu.cfs_period_us", str(CPU_PERIOD_US)),
        ("cpu.cfs_quota_us", str(quota)),
        ("memory.limit_in_bytes", str(limit)),
    ]


def cgroup_dirs(
    *, version: CgroupVersion, root: Path, parent: str, vm_id: str, files: Sequence[str]
) -> list[Path]:
    """The cgroup directories the jailer creates for ``files`` (to remove on destroy)."""
    if version == 2:
        return [root / parent / vm_id]
    controllers = sorted({name.split(".", 1)[0] for name in files})
    return [root / controller / parent / vm_id for controller in controllers]


def vcpu_count(vcpu: float) -> int:
    """Whole vCPUs for the guest: at least one, at most Firecracker's 32."""
    return max(1, min(32, math.ceil(vcpu)))


def jailer_argv(
    *,
    jailer_bin: Path,
    firecracker_bin: Path,
    vm_id: str,
    uid: int,
    gid: int,
    chroot_base: Path,
    cgroup_version: CgroupVersion,
    cgroups: Sequence[tuple[str, str]],
    parent_cgroup: str | None = None,
    netns: str | None = None,
    new_pid_ns: bool = True,
    daemonize: bool = False,
) -> list[str]:
    """The exact argv that starts one jailed firecracker with an API socket.

    No ``--config-file``: the VM is configured through the API, step by step.
    """
    if not _ID.match(vm_id):
        raise InvalidInput(f"jailer id {vm_id!r} must be 1-64 letters, digits or hyphens")
    if "firecracker" not in firecracker_bin.name:
        raise InvalidInput(f"the jailer only execs a file named *firecracker*: {firecracker_bin}")
    if uid <= 0 or gid <= 0:
        raise InvalidInput("the jailer must drop to a dedicated non-root uid and gid")
    argv = [
        str(jailer_bin),
        "--id",
        vm_id,
        "--exec-file",
        str(firecracker_bin),
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--chroot-base-dir",
        str(chroot_base),
        "--cgroup-version",
        str(cgroup_version),
    ]
    for name, value in cgroups:
        argv += ["--cgroup", f"{name}={value}"]
    if parent_cgroup:
        argv += ["--parent-cgroup", parent_cgroup]
    if netns:
        argv += ["--netns", netns]
    if new_pid_ns:
        argv.append("--new-pid-ns")
    if daemonize:
        argv.append("--daemonize")
    argv += ["--", "--api-sock", API_SOCKET]
    return argv
