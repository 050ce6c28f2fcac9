"""Compute resources: vCPUs (millicores) and memory in MiB, with exact arithmetic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resources:
    """An amount of compute: ``vcpu`` in whole CPUs and ``memory`` in MiB.

    vCPUs are kept as millicores internally so that fractional requests (0.5 CPU) add up
    exactly; the public fields are what the API shows.
    """

    millicpu: int
    memory_mib: int
    disk_mib: int = 0

    @classmethod
    def of(cls, *, vcpu: float, memory_mib: int, disk_mib: int = 0) -> Resources:
        return cls(millicpu=round(vcpu * 1000), memory_mib=memory_mib, disk_mib=disk_mib)

    @property
    def vcpu(self) -> float:
        return self.millicpu / 1000

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.millicpu + other.millicpu,
            self.memory_mib + other.memory_mib,
            self.disk_mib + other.disk_mib,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.millicpu - other.millicpu,
            self.memory_mib - other.memory_mib,
            self.disk_mib - other.disk_mib,
        )

    def fits_in(self, free: Resources) -> bool:
        return (
            self.millicpu <= free.millicpu
            and self.memory_mib <= free.memory_mib
            and self.disk_mib <= free.disk_mib
        )

    def shortfall(self, free: Resources) -> dict[str, float]:
        """What is missing for ``self`` to fit in ``free`` (empty when it fits)."""
        missing: dict[str, float] = {}
        if self.millicpu > free.millicpu:
            missing["vcpu"] = (self.millicpu - free.millicpu) / 1000
        if self.memory_mib > free.memory_mib:
            missing["memory"] = self.memory_mib - free.memory_mib
        if self.disk_mib > free.disk_mib:
            missing["disk"] = self.disk_mib - free.disk_mib
        return missing


ZERO = Resources(0, 0, 0)
