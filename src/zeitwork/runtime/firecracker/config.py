"""The Firecracker driver's configuration (built by the agent's composition root)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zeitwork.runtime.firecracker.rootfs import CowMethod


@dataclass(frozen=True, slots=True, kw_only=True)
class FirecrackerConfig:
    firecracker_bin: Path
    jailer_bin: Path
    kernel: Path  # uncompressed vmlinux
    chroot_base: Path = Path("/srv/jailer")
    # Base images and per-instance views must share one file system (reflink).
    rootfs_dir: Path = Path("/srv/jailer/zeitwork-rootfs")
    busybox: Path = Path("/bin/busybox")  # static (Debian busybox-static)
    uid: int = 10_000  # dedicated, unprivileged ids the VMM runs as
    gid: int = 10_000
    cgroup_version: Literal["auto", 1, 2] = "auto"
    cgroup_root: Path = Path("/sys/fs/cgroup")
    parent_cgroup: str = "zeitwork-firecracker"
    memory_overhead_mib: int = 64  # VMM's own memory on top of the guest's
    rootfs_headroom_mib: int = 256
    cow_method: CowMethod | Literal["auto"] = "auto"
    tap_prefix: str = "zwfc"  # TAP names: prefix + hex of the instance id (15 chars)
    boot_timeout: float = 10.0  # jailer start until the API socket answers
    api_timeout: float = 5.0
    extra_boot_args: tuple[str, ...] = ("quiet",)
    nameservers: tuple[str, ...] = ()
    console_max_bytes: int = 8 * 1024 * 1024  # console.log rotated past this (housekeeping)
    console_keep: int = 2  # rotated console logs kept
