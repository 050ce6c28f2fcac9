"""Releases, pure: given one environment's releases, instances and their health, the next
steps of its rollout, its replica count and its node drains. No I/O; the releases
reconciler builds the view from PostgreSQL and applies the actions (compare-and-set).

Vocabulary. The *current* release serves the environment; the *target* is the release a
running rollout moves to (None in steady state). An instance is *live* while its desired
state is ``running`` and it is not ``failed``/``stopped``/``terminated``; it is *serving*
when the route table may list it (the route table lists a serving instance only while it
is also ``running`` and ``healthy``); it is *draining* once it left the route
(``drain_started_at`` set): it keeps running for ``drain_timeout`` s so in-flight requests
finish, then it is stopped. Draining instances do not count against ``max_surge``.

Rules (``plan`` returns the actions of one pass; applying them and planning again moves on):

- Rolling: place up to ``replicas + surge - live_non_draining`` target instances (never
  more than ``replicas`` target instances in all); a target instance healthy for
  ``min_healthy_time`` joins the route (``Serve``); for each target instance serving beyond
  what is needed, an old serving instance leaves the route (``Unserve``): the number of
  serving healthy instances never drops below ``replicas - max_unavailable``. With
  ``max_unavailable`` > 0 that many old instances may leave before replacements are
  healthy (the room they free lets more surge be placed).
- Blue-green: all ``replicas`` target instances placed at once; none serves until all are
  healthy for ``min_healthy_time``; then one pass serves all of them and unserves all old
  ones (the apply writes them in one transaction: one route-table change).
- Immediate: every old instance leaves the route and is stopped at once (no drain); the
  target instances are placed and serve once healthy (not zero-downtime; documented).
- Done: when ``replicas`` target instances serve and no old instance serves, ``Promote``
  (target becomes current and ``active``, the previous ``superseded``, rollout
  ``succeeded``).
- Failure: a target instance that ends ``failed`` (crash loop, exit under ``never``,
  OOM), or is not healthy ``healthy_deadline`` s after it was placed, or the rollout
  passing ``progress_deadline``, fails the release (``Fail`` with a readable cause built
  from the instance: exit code, OOM, the last check's detail such as ``GET /healthz -> 500``
  or ``connection refused on :8080``, the last log lines). With ``auto_revert`` every target
  instance is stopped and old instances that left the route but still run healthy rejoin
  it; the current release then heals back to its replica count (below).
- Steady state (no target) and after a revert: the current release keeps ``replicas`` live
  instances: missing ones are placed (``Place``), with back-off after recent failures
  (``1, 2, 4, ... 60`` s from the last failure, by the number of failures in the last ten
  minutes) so a broken app does not churn the cluster; extra ones (scale down) leave the
  route, newest first, and are stopped after their drain; healthy current instances not in
  the route join it after ``min_healthy_time``.
- Instances that belong to neither the current nor the target release (superseded or
  failed releases) leave the route and are stopped once the current release has enough
  serving instances to stand without them.
- Node drain: an instance on a node that is not serving new work (``node_schedulable``
  False: draining or down) is replaced: a replacement of its release is placed first, and
  once the replacement serves, the instance leaves the route, drains and is stopped.
- Drain end: an instance draining for ``drain_timeout`` s is stopped (``Stop``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal

from zeitwork.core.states import HealthState, InstanceState

StrategyType = Literal["rolling", "bluegreen", "immediate"]


@dataclass(frozen=True, slots=True)
class Strategy:
    """``RolloutStrategy`` (wire) with counts already resolved against the replica count."""

    type: StrategyType = "rolling"
    max_surge: int = 1
    max_unavailable: int = 0
    min_healthy_time: float = 5.0
    drain_timeout: float = 30.0
    progress_deadline: float = 300.0
    healthy_deadline: float = 120.0
    auto_revert: bool = True


def resolve_count(value: int | str, replicas: int, *, round_up: bool) -> int:
    """``max_surge`` / ``max_unavailable`` as a number of instances: an int as it is, a
    percentage of ``replicas`` rounded up (surge) or down (unavailable), as Kubernetes does."""
    if isinstance(value, int):
        return value
    percent = int(value.strip().removesuffix("%"))
    scaled = replicas * percent
    return -(-scaled // 100) if round_up else scaled // 100


@dataclass(frozen=True, slots=True)
class ReleaseView:
    id: uuid.UUID
    version: int
    strategy: Strategy


@dataclass(frozen=True, slots=True)
class InstanceView:
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
    exit_code: int | None = None
    oom_killed: bool = False
    reason: str | None = None
    last_check: str | None = None  # the last health check's detail
    log_tail: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EnvironmentView:
    environment_id: uuid.UUID
    now: float
    replicas: int  # the environment's desired count
    current: ReleaseView | None
    target: ReleaseView | None = None
    rollout_id: uuid.UUID | None = None
    rollout_started_at: float | None = None
    instances: tuple[InstanceView, ...] = ()
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
    instance_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Unserve:
    """Leave the route and start draining (``drain_started_at = now``)."""

    instance_id: uuid.UUID
    drain: bool = True  # False: stop right away (immediate strategy, failed instances)


@dataclass(frozen=True, slots=True)
class Stop:
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


Action = Place | Serve | Unserve | Stop | Promote | Fail | Wait


def plan(view: EnvironmentView) -> list[Action]:
    """The actions of one pass over one environment, in the order they are to be applied
    (state changes of the release last). Deterministic: the same view gives the same list."""
    raise NotImplementedError  # implemented with its exhaustive tests (tests/unit/operator)
