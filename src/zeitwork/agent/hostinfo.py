"""What this host has: CPUs, memory, disk of the data directory, its hostname and address;
capacity for instances is that minus a configured reserve for the host itself."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from zeitwork.core.resources import Resources


@dataclass(frozen=True, slots=True)
class HostFacts:
    cpus: int
    memory_mib: int
    disk_mib: int
    disk_free_mib: int


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise OSError("MemTotal missing from /proc/meminfo")


def facts(data_dir: Path) -> HostFacts:
    data_dir.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(data_dir)
    return HostFacts(
        cpus=cpu_count(),
        memory_mib=memory_mib(),
        disk_mib=usage.total // (1024 * 1024),
        disk_free_mib=usage.free // (1024 * 1024),
    )


def capacity(host: HostFacts, *, reserve: Resources) -> Resources:
    """What instances may use: the host minus the reserve, never below zero (pure)."""
    return Resources(
        millicpu=max(0, host.cpus * 1000 - reserve.millicpu),
        memory_mib=max(0, host.memory_mib - reserve.memory_mib),
        disk_mib=max(0, host.disk_mib - reserve.disk_mib),
    )


def hostname() -> str:
    return socket.gethostname()


def detect_ip(operator_url: str | None) -> str:
    """The address this host uses to reach the operator (or the default route), without
    sending anything: a UDP socket's ``connect`` only picks the source address."""
    target = "192.0.2.1"
    port = 80
    if operator_url:
        from urllib.parse import urlsplit

        parts = urlsplit(operator_url)
        target = parts.hostname or target
        port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((target, port))
            address = str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    return address
