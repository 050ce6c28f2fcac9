"""The rollout planner's input and output: one environment's view (its releases, their
strategies and every instance with its health) and the actions of a pass. The rules that
turn the one into the other are ``rollout_plan``'s (which re-exports these names)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from zeitwork.core.states import HealthState, InstanceState
from zeitwork.wire.releases import resolve_count

if TYPE_CHECKING:
    from zeitwork.wire.releases import RolloutStrategy

StrategyType = Literal["rolling", "bluegreen", "immediate"]


@dataclass(frozen=True, slots=True)
class ResolvedStrategy:
    """``RolloutStrategy`` (wire) with counts already resolved against the replica count."""

    type: StrategyType = "rolling"
    max_surge: int = 1
    max_unavailable: int = 0
    min_healthy_time: float = 5.0
    drain_timeout: float = 30.0
    progress_deadline: float = 300.0
    healthy_deadline: float = 120.0
    auto_revert: bool = True

    @classmethod
    def from_wire(cls, strategy: RolloutStrategy, replicas: int) -> ResolvedStrategy:
        """The wire strategy with ``max_surge`` / ``max_unavailable`` resolved against
        ``replicas`` (see ``resolve_count``)."""
        return cls(
            type=strategy.type,
            max_surge=resolve_count(strategy.max_surge, replicas, round_up=True),
            max_unavailable=resolve_count(strategy.max_unavailable, replicas, round_up=False),
            min_healthy_time=strategy.min_healthy_time,
            drain_timeout=strategy.drain_timeout,
            progress_deadline=strategy.progress_deadline,
            healthy_deadline=strategy.healthy_deadline,
            auto_revert=strategy.auto_revert,
        )


@dataclass(frozen=True, slots=True)
class ReleaseView:
    id: uuid.UUID
    version: int
    strategy: ResolvedStrategy


@dataclass(frozen=True, slots=True)
class ReplicaView:
    id: uuid.UUID
    release_id: uuid.UUID | None
    node_id: uuid.UUID | None
    state: InstanceState
    desired_state: str  # running | stopped | terminated
    health: HealthState
    created_at: float  # seconds (same clock as EnvironmentView.now)
    healthy_since: float | None = None
    serving: bool = False
    drain_started_at: float | None = None
    node_schedulable: bool = True  # False: its node is draining or down
    node_down: bool = False  # its node stopped reporting: its health is stale, it serves nothing
    exit_code: int | None = None
    oom_killed: bool = False
    reason: str | None = None
    last_check: str | None = None  # the last health check's detail
    log_tail: tuple[str, ...] = ()
    drain_timeout: float | None = None
    """its own release's drain timeout (None: its release's strategy in the view): an old
    instance keeps the time it started draining with after the new release is promoted"""


@dataclass(frozen=True, slots=True)
class EnvironmentView:
    environment_id: uuid.UUID
    now: float
    replicas: int  # the environment's desired count
    current: ReleaseView | None
    target: ReleaseView | None = None
    rollout_id: uuid.UUID | None = None
    rollout_started_at: float | None = None
    instances: tuple[ReplicaView, ...] = ()
    """every instance of the environment that is not terminated (any release)"""
    recent_failures: tuple[float, ...] = field(default=())
    """when instances of the current release failed, the last ten minutes"""


@dataclass(frozen=True, slots=True)
class Place:
    """Create ``count`` new instances of ``release_id`` (the scheduler picks nodes)."""

    release_id: uuid.UUID
    count: int


@dataclass(frozen=True, slots=True)
class Serve:
    """Join the route (``serving = true``, ``drain_started_at = null``: a draining
    instance rejoins)."""

    instance_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Unserve:
    """Leave the route (``serving = false``) and start draining (``drain_started_at = now``)."""

    instance_id: uuid.UUID
    drain: bool = True  # False: no drain; the same pass stops it (or it is stopping already)


@dataclass(frozen=True, slots=True)
class Terminate:
    """Desired ``terminated``: the agent stops it (SIGTERM, SIGKILL after the stop
    timeout) and its reservation is released."""

    instance_id: uuid.UUID
    reason: str


@dataclass(frozen=True, slots=True)
class Promote:
    release_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Fail:
    release_id: uuid.UUID
    cause: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing more to do now; ``until`` when a timer (min_healthy_time, drain, back-off)
    will make progress possible (None: waiting on an outside change)."""

    reason: str
    until: float | None = None


Action = Place | Serve | Unserve | Terminate | Promote | Fail | Wait
