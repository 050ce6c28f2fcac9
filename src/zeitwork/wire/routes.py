"""The route table the operator serves to load balancers (and edges).

``GET /api/v1/routes?version=V&wait=S`` answers ``RouteTable`` immediately when the table's
version differs from V, otherwise when it changes or after S seconds (long-poll).
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, Field

Algorithm = Literal["round-robin", "least-connections", "ip-hash"]


class Backend(BaseModel):
    instance_id: uuid.UUID | None = None
    address: str = Field(description="host:port")
    weight: int = Field(default=1, ge=0, le=1000)


class Route(BaseModel):
    host: str = Field(description="lower-case host name, no port")
    path_prefix: str = "/"
    deployment_id: uuid.UUID | None = None
    algorithm: Algorithm | None = None
    backends: list[Backend]
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    verified: bool = Field(
        default=False,
        description="the domain's owner proved control (DNS); only then may edges order ACME "
        "certificates for it",
    )


class RouteTable(BaseModel):
    version: int = Field(ge=0)
    routes: list[Route]
    default_backends: list[Backend] = Field(
        default_factory=list, description="every running instance; for unknown hosts"
    )
