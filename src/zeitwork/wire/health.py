"""Per-release health checks: what the user configures, what the node agent runs beside each
instance, what the route table carries to the load balancers, and the result the agent
reports.

Default when a release names none: ``tcp`` on the app's port, so any app that listens is
served (an app without a ``/health`` route included).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from zeitwork.core.states import HealthState

HealthCheckType = Literal["http", "tcp", "none"]


class HealthCheck(BaseModel):
    """How an instance of a release is checked.

    ``http``: ``GET path`` (with ``host`` as the Host header when given) must answer a status
    in ``[expected_status_min, expected_status_max]`` (2xx-3xx by default) within
    ``timeout``. ``tcp``: a connection to ``port`` opens within ``timeout``. ``none``: the
    instance counts as healthy once it runs.

    Readiness: an instance takes traffic only once ``healthy_threshold`` checks in a row
    passed. Liveness: after it was healthy, ``unhealthy_threshold`` failures in a row make it
    unhealthy (it leaves the route at once) and its agent restarts it. Failures within
    ``grace_period`` seconds of a start do not count.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: HealthCheckType = "tcp"
    path: str = Field(
        default="/",
        min_length=1,
        max_length=1024,
        pattern=r"^/[\x21-\x7e]*$",
        description="http only: the request target (printable ASCII, starting with '/')",
    )
    host: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$",
        description="http only: the Host header (default: the instance's address)",
    )
    port: int | None = Field(
        default=None, ge=1, le=65535, description="default: the release's app port"
    )
    expected_status_min: int = Field(default=200, ge=100, le=599)
    expected_status_max: int = Field(default=399, ge=100, le=599)
    interval: float = Field(default=5.0, ge=0.1, le=3600, description="seconds between checks")
    timeout: float = Field(default=2.0, ge=0.05, le=600, description="seconds per check")
    healthy_threshold: int = Field(default=1, ge=1, le=100)
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    grace_period: float = Field(
        default=30.0, ge=0, le=3600, description="seconds after a start when failures do not count"
    )

    @model_validator(mode="after")
    def _status_range(self) -> HealthCheck:
        if self.expected_status_min > self.expected_status_max:
            raise ValueError("expected_status_min must not exceed expected_status_max")
        return self


DEFAULT_HEALTH_CHECK = HealthCheck()


class HealthResult(BaseModel):
    """The last check of one instance, as its agent reports it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    detail: str = Field(
        default="",
        max_length=500,
        description="e.g. 'GET /healthz -> 500' or 'connection refused on :8080'",
    )
    status_code: int | None = Field(default=None, ge=100, le=599)
    latency_ms: float | None = Field(default=None, ge=0)
    checked_at: float | None = Field(
        default=None, ge=0, description="when, as a Unix timestamp (seconds)"
    )


class InstanceHealth(BaseModel):
    """What the agent reports of an instance's health with every state update."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state: HealthState = HealthState.UNKNOWN
    last: HealthResult | None = None
    consecutive_failures: int = Field(default=0, ge=0)
    consecutive_successes: int = Field(default=0, ge=0)
