"""Small models shared by several APIs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ResourcesModel(BaseModel):
    """Compute amount on the wire: ``vcpu`` (may be fractional) and ``memory`` in MiB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # at least one millicpu: the database stores millicpus, and a smaller value would be
    # stored as 0, which this model then refuses to answer with (a 500)
    vcpu: float = Field(ge=0.001, le=1024, description="virtual CPUs (0.25 steps allowed)")
    memory: int = Field(gt=0, le=16 * 1024 * 1024, description="memory in MiB")


class CapacityModel(BaseModel):
    """What a node has, uses and has left; ``disk`` in MiB."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vcpu: float = Field(ge=0)
    memory: int = Field(ge=0)
    disk: int = Field(default=0, ge=0)
