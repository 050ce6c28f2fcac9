"""The ``firecracker`` runtime driver: jailed Firecracker microVMs on KVM hosts.

Only this package knows Firecracker's API (``api``), the jailer's command line (``jailer``)
and what the guest expects (``guest``, ``zeitwork-init.sh``).
"""

from __future__ import annotations

from zeitwork.runtime.firecracker.api import FirecrackerApi
from zeitwork.runtime.firecracker.config import FirecrackerConfig
from zeitwork.runtime.firecracker.driver import FirecrackerDriver, detect_cgroup_version
from zeitwork.runtime.firecracker.rootfs import CowView, RootfsStore, detect_cow_method
from zeitwork.runtime.firecracker.telemetry import MetricsCollector, Telemetry

__all__ = [
    "CowView",
    "FirecrackerApi",
    "FirecrackerConfig",
    "FirecrackerDriver",
    "MetricsCollector",
    "RootfsStore",
    "Telemetry",
    "detect_cgroup_version",
    "detect_cow_method",
]
