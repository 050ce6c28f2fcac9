"""Request totals per route that load balancers push to the operator.

``POST /api/v1/proxies/stats`` (``proxy`` token) with ``ProxyStatsPush``: the balancer's id
(made once, kept in its data directory) and its ``GET /stats/routes`` body, totals since it
started. The operator keeps the last two minutes of samples and takes differences for rates.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

LB_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MAX_ROUTES = 5001
"""The balancer's label bound (5000 routes) plus ``other``."""
MAX_BOUNDS = 64

MAX_COUNT = 10**18
MAX_TIME = 1e11
"""Unix seconds (the year 5138): anything later is a broken clock."""

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
StatusClass = Literal["1xx", "2xx", "3xx", "4xx", "5xx"]
RouteHost = Annotated[str, StringConstraints(min_length=1, max_length=300)]


class LatencyTotals(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    counts: list[Count] = Field(
        max_length=MAX_BOUNDS + 1,
        description="per bucket (not cumulative): one per bound, then one for slower answers",
    )
    count: Count = 0
    sum: float = Field(default=0.0, ge=0, le=MAX_COUNT, description="seconds")


class RouteTotals(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    requests: Count
    status: dict[StatusClass, Count]
    bytes_in: Count = 0
    bytes_out: Count = 0
    latency: LatencyTotals


class RouteStatsSnapshot(BaseModel):
    """A balancer's ``GET /stats/routes``: per route host, totals since ``started_at``."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    started_at: float = Field(ge=0, le=MAX_TIME, description="unix seconds, the balancer's clock")
    at: float = Field(ge=0, le=MAX_TIME, description="when the totals were read (its clock)")
    workers: int = Field(default=1, ge=1)
    latency_bounds: list[Annotated[float, Field(gt=0, le=MAX_TIME)]] = Field(
        min_length=1, max_length=MAX_BOUNDS, description="seconds, increasing"
    )
    routes: dict[RouteHost, RouteTotals] = Field(max_length=MAX_ROUTES)

    @model_validator(mode="after")
    def _check_shapes(self) -> RouteStatsSnapshot:
        bounds = self.latency_bounds
        if any(low >= high for low, high in itertools.pairwise(bounds)):
            raise ValueError("latency_bounds must increase")
        if self.at < self.started_at:
            raise ValueError("at is before started_at")
        width = len(bounds) + 1
        for host, totals in self.routes.items():
            if len(totals.latency.counts) != width:
                raise ValueError(
                    f"routes[{host!r}].latency.counts has {len(totals.latency.counts)} buckets, "
                    f"latency_bounds need {width}"
                )
        return self


class ProxyStatsPush(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    lb_id: str = Field(pattern=LB_ID_PATTERN, description="the balancer's id (its data dir)")
    stats: RouteStatsSnapshot
