"""Runtime drivers behind one protocol; ``registry`` picks one (``auto`` | ``oci`` |
``firecracker``)."""

from __future__ import annotations

from zeitwork.runtime.base import (
    Driver,
    DriverChoice,
    DriverName,
    Handle,
    InstanceSpec,
    NetworkAttachment,
    Phase,
    ProcessSpec,
    Recovered,
    Status,
)

__all__ = [
    "Driver",
    "DriverChoice",
    "DriverName",
    "Handle",
    "InstanceSpec",
    "NetworkAttachment",
    "Phase",
    "ProcessSpec",
    "Recovered",
    "Status",
]
