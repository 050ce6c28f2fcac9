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

How the rules are applied, where the rules above leave a choice:

- A pass lists ``Serve``, then ``Unserve``, then ``Stop``, then ``Place``, then the release's
  ``Promote`` or ``Fail``; or it is one ``Wait`` alone (``until`` the earliest timer that
  can change the plan, always in the future, or None). At most one action per instance,
  except ``Unserve(drain=False)`` followed by ``Stop`` for a serving instance stopped at once.
- ``Serve`` puts an instance in the route and ends its drain (``drain_started_at = None``):
  a draining instance that rejoins. ``Unserve`` clears ``serving``.
- "In the route" counts serving, running, healthy instances that do not drain. An instance
  that serves but is not healthy (the route table skips it) may leave at any time: it
  costs nothing against ``max_unavailable``. Old instances leave unhealthy first, then
  those of neither release, then those on nodes taking no new work, then oldest first.
- Failed or stopped-by-itself instances (state ``failed``/``stopped`` while wanted
  ``running``: the agent gave up on them) are stopped (their reservation is released) and
  no longer count; of the current release they are replaced with the back-off. During a
  rollout, old instances that do not serve are stopped (the target replaces them), and a
  target instance on a node that takes no new work is stopped unless it serves.
- ``healthy_deadline`` applies to a target instance that does not serve and is not
  healthy; a serving one that turns unhealthy leaves the route by itself and, if it ends
  ``failed``, fails the release. ``healthy_since`` is when the instance's current healthy
  streak began (None while not healthy): it is ready once healthy that long.
- ``Fail`` with ``auto_revert``: target instances that do not serve stop at once; those
  that serve keep serving until the current release stands without them (they are then
  of neither release). Without ``auto_revert`` the pass only fails the release; the rules
  above then apply to what is left exactly as after a revert.
- Scale down removes instances not in the route before those in it, newest first.
- An instance with no node yet (``node_id`` None) is never "on a node taking no new work".
- ``max_surge`` 0 with ``max_unavailable`` 0 cannot make progress; it is taken as surge 1.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from zeitwork.core.states import HealthState, InstanceState

if TYPE_CHECKING:
    from zeitwork.wire.releases import RolloutStrategy

StrategyType = Literal["rolling", "bluegreen", "immediate"]

BACKOFF_CAP = 60.0  # s: the longest wait before placing again after failures
FAILURE_WINDOW = 600.0  # s: failures older than this do not count for the back-off
LOG_LINES = 20  # log lines of a failed instance quoted in the cause


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

    @classmethod
    def from_wire(cls, strategy: RolloutStrategy, replicas: int) -> Strategy:
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
    """Join the route (``serving = true``, ``drain_started_at = null``: a draining
    instance rejoins)."""

    instance_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Unserve:
    """Leave the route (``serving = false``) and start draining (``drain_started_at = now``)."""

    instance_id: uuid.UUID
    drain: bool = True  # False: no drain, a Stop of the instance follows in the same pass


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


def backoff_delay(failures: int) -> float:
    """Seconds to wait before placing again after ``failures`` recent failures:
    ``1, 2, 4, ... 60`` (0 without failures)."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_CAP, 2.0 ** min(failures - 1, 16))


def backoff_until(failures: tuple[float, ...], now: float) -> float | None:
    """When placing may resume after the failures of the last ten minutes (None: now)."""
    recent = [t for t in failures if now - FAILURE_WINDOW <= t <= now]
    if not recent:
        return None
    until = max(recent) + backoff_delay(len(recent))
    return until if until > now else None


def failure_cause(instance: InstanceView, version: int, *, healthy_deadline: float) -> str:
    """Why ``instance`` fails its release, readable, followed by up to the last 20 log lines."""
    head = f"instance {_short(instance)} of v{version}"
    if _ended(instance):
        what = _ended_phrase(instance)
    else:
        what = f"not healthy {healthy_deadline:g} s after it was placed ({_last_check(instance)})"
    return _with_logs(f"{head} {what}", instance.log_tail)


def plan(view: EnvironmentView) -> list[Action]:
    """The actions of one pass over one environment, in the order they are to be applied
    (state changes of the release last). Deterministic: the same view gives the same list."""
    p = _Pass(view)
    target = view.target
    if target is not None and (view.current is None or target.id != view.current.id):
        _rollout(p, target)
    else:
        _steady(p)
    return p.actions()


# --- instance predicates ---------------------------------------------------------------

_NOT_LIVE = frozenset({InstanceState.FAILED, InstanceState.STOPPED, InstanceState.TERMINATED})
_ENDED = frozenset({InstanceState.FAILED, InstanceState.STOPPED})
_OUR_KILL_CODES = frozenset({137, 143})  # SIGKILL / SIGTERM after a failed liveness check


def _live(i: InstanceView) -> bool:
    return i.desired_state == "running" and i.state not in _NOT_LIVE


def _ended(i: InstanceView) -> bool:
    """Wanted running but ended for good (the agent reports failed/stopped once its
    restart policy gave up)."""
    return i.desired_state == "running" and i.state in _ENDED


def _healthy(i: InstanceView) -> bool:
    return i.state == InstanceState.RUNNING and i.health == HealthState.HEALTHY


def _in_route(i: InstanceView) -> bool:
    """Listed by the route table: serving, running, healthy, not draining."""
    return i.serving and i.drain_started_at is None and _healthy(i)


def _leaving(i: InstanceView) -> bool:
    """On a node that takes no new work (an instance not on a node yet is not)."""
    return i.node_id is not None and not i.node_schedulable


def _ready_at(i: InstanceView, min_healthy_time: float) -> float | None:
    """When ``i`` has been healthy for ``min_healthy_time`` (None: not healthy)."""
    if not _healthy(i) or i.healthy_since is None:
        return None
    return i.healthy_since + min_healthy_time


def _order(i: InstanceView) -> tuple[float, str]:
    return (i.created_at, str(i.id))


def _newest_first(i: InstanceView) -> tuple[float, str]:
    return (-i.created_at, str(i.id))


def _last_check(i: InstanceView) -> str:
    if i.last_check:
        return f"last check: {i.last_check}"
    return f"{i.state.value}, no health check result yet"


def _ended_phrase(i: InstanceView) -> str:
    failed_check = i.health == HealthState.UNHEALTHY and bool(i.last_check)
    if i.oom_killed:
        phrase = "was killed: out of memory"
    elif failed_check and (i.exit_code is None or i.exit_code in _OUR_KILL_CODES):
        phrase = f"failed its health check: {i.last_check}"
    elif i.exit_code is not None:
        phrase = f"exited with code {i.exit_code}"
    elif i.reason:
        return f"failed: {i.reason}"
    else:
        phrase = "failed" if i.state == InstanceState.FAILED else "stopped by itself"
    if i.reason and i.reason not in phrase:
        phrase = f"{phrase} ({i.reason})"
    return phrase


def _with_logs(text: str, log_tail: tuple[str, ...]) -> str:
    lines = log_tail[-LOG_LINES:]
    if not lines:
        return text
    return text + "\nlast log lines:\n" + "\n".join(lines)


def _short(i: InstanceView) -> str:
    return str(i.id)[:8]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- one pass --------------------------------------------------------------------------


class _Pass:
    """The actions of one pass being collected, in apply order, one decision per instance."""

    def __init__(self, view: EnvironmentView) -> None:
        self.view = view
        self.now = view.now
        self.instances = sorted(view.instances, key=_order)
        self._serve: list[Serve] = []
        self._unserve: list[Unserve] = []
        self._stop: list[Stop] = []
        self._place: list[Place] = []
        self._final: list[Promote | Fail] = []
        self._touched: set[uuid.UUID] = set()
        self._timers: list[tuple[float, str]] = []
        self._waiting: list[str] = []
        self._cleanup()

    # the instances still to decide on
    def live(
        self, release_id: uuid.UUID | None = None, *, draining: bool = False
    ) -> list[InstanceView]:
        return [
            i
            for i in self.instances
            if i.id not in self._touched
            and _live(i)
            and (i.drain_started_at is not None) == draining
            and (release_id is None or i.release_id == release_id)
        ]

    def others(self, *release_ids: uuid.UUID) -> list[InstanceView]:
        """Live, not draining, of none of ``release_ids``."""
        return [i for i in self.live() if i.release_id not in release_ids]

    def serve(self, i: InstanceView) -> None:
        self._touched.add(i.id)
        self._serve.append(Serve(i.id))

    def unserve(self, i: InstanceView, *, drain: bool = True) -> None:
        self._touched.add(i.id)
        self._unserve.append(Unserve(i.id, drain=drain))

    def stop(self, i: InstanceView, reason: str) -> None:
        """Stop ``i``; a serving one leaves the route first, without a drain."""
        if i.serving:
            self._unserve.append(Unserve(i.id, drain=False))
        self._touched.add(i.id)
        self._stop.append(Stop(i.id, reason))

    def untouched(self, i: InstanceView) -> bool:
        return i.id not in self._touched

    def keep(self, i: InstanceView) -> None:
        """Decided: nothing to do with ``i`` this pass."""
        self._touched.add(i.id)

    def place(self, release_id: uuid.UUID, count: int) -> None:
        if count > 0:
            self._place.append(Place(release_id, count))

    def finish(self, action: Promote | Fail) -> None:
        self._final.append(action)

    def timer(self, at: float, reason: str) -> None:
        self._timers.append((at, reason))

    def waiting(self, reason: str) -> None:
        self._waiting.append(reason)

    def _cleanup(self) -> None:
        """Instances that are not live any more: out of the route, ended ones stopped."""
        for i in self.instances:
            if _ended(i):
                why = "failed" if i.state == InstanceState.FAILED else "stopped by itself"
                self.stop(i, f"{why}: {_ended_phrase(i)}")
            elif not _live(i):
                if i.serving:
                    self._unserve.append(Unserve(i.id, drain=False))
                self._touched.add(i.id)

    def _drain_ends(self) -> None:
        for i in self.live(draining=True):
            ends = (i.drain_started_at or 0.0) + self._strategy_of(i).drain_timeout
            if self.now >= ends:
                self.stop(i, "drained")
            else:
                self.timer(ends, "draining")

    def _strategy_of(self, i: InstanceView) -> Strategy:
        for release in (self.view.target, self.view.current):
            if release is not None and release.id == i.release_id:
                return release.strategy
        for release in (self.view.current, self.view.target):
            if release is not None:
                return release.strategy
        return Strategy()

    def actions(self) -> list[Action]:
        self._drain_ends()
        out: list[Action] = [*self._serve, *self._unserve, *self._stop, *self._place]
        out.extend(self._final)
        if out:
            return out
        if self._timers:
            at, reason = min(self._timers)
            return [Wait(reason, until=at)]
        return [Wait(self._waiting[0] if self._waiting else "steady", until=None)]


def _leave_route(
    p: _Pass, candidates: list[InstanceView], budget: int, reason: str
) -> tuple[int, list[InstanceView]]:
    """Serving ``candidates`` leave the route (drain) while the number in the route may
    drop by ``budget`` (one not in the route costs nothing); non-serving ones stop. The
    budget left and the candidates kept."""
    kept: list[InstanceView] = []
    for i in candidates:
        if not i.serving:
            p.stop(i, reason)
        elif not _in_route(i):
            p.unserve(i)
        elif budget > 0:
            p.unserve(i)
            budget -= 1
        else:
            p.keep(i)
            kept.append(i)
    return budget, kept


def _is_ready(i: InstanceView, min_healthy_time: float, now: float) -> bool:
    at = _ready_at(i, min_healthy_time)
    return at is not None and now >= at


def _serve_ready(
    p: _Pass, instances: list[InstanceView], strategy: Strategy, label: str
) -> list[InstanceView]:
    """Serve the instances ready (healthy for ``min_healthy_time``); those now serving."""
    serving: list[InstanceView] = []
    for i in instances:
        if i.serving:
            serving.append(i)
            continue
        ready = _ready_at(i, strategy.min_healthy_time)
        if ready is not None and p.now >= ready:
            p.serve(i)
            serving.append(i)
        elif ready is not None:
            p.timer(
                ready, f"{label}: instance {_short(i)} healthy for {strategy.min_healthy_time:g} s"
            )
        else:
            p.waiting(f"{label}: waiting for instance {_short(i)} to become healthy")
    return serving


# --- the rollout -----------------------------------------------------------------------


def _rollout(p: _Pass, target: ReleaseView) -> None:
    view, s = p.view, target.strategy
    label = f"v{target.version}"
    tgt = p.live(target.id)
    old = p.others(target.id)
    if sum(1 for i in tgt if i.serving) >= view.replicas and not any(i.serving for i in old):
        p.finish(Promote(target.id))
        return
    cause = _rollout_failure(p, target, tgt)
    if cause is not None:
        _fail(p, target, cause)
        return
    if view.rollout_started_at is not None:
        p.timer(view.rollout_started_at + s.progress_deadline, f"{label}: progress deadline")
    for i in tgt:
        if not i.serving and _leaving(i):
            p.stop(i, "its node takes no new work")
        elif not i.serving and not _healthy(i):
            p.timer(i.created_at + s.healthy_deadline, f"{label}: healthy deadline")
    tgt = [i for i in tgt if p.untouched(i)]
    if s.type == "bluegreen":
        _bluegreen(p, target, tgt, old)
    elif s.type == "immediate":
        _immediate(p, target, tgt, old)
    else:
        _rolling(p, target, tgt, old)


def _rollout_failure(p: _Pass, target: ReleaseView, tgt: list[InstanceView]) -> str | None:
    s = target.strategy
    for i in p.instances:
        if i.release_id == target.id and _ended(i):
            return failure_cause(i, target.version, healthy_deadline=s.healthy_deadline)
    for i in tgt:
        if not i.serving and not _healthy(i) and p.now >= i.created_at + s.healthy_deadline:
            return failure_cause(i, target.version, healthy_deadline=s.healthy_deadline)
    started = p.view.rollout_started_at
    if started is not None and p.now >= started + s.progress_deadline:
        serving = sum(1 for i in tgt if i.serving)
        return (
            f"rollout to v{target.version} did not finish within {s.progress_deadline:g} s: "
            f"{serving} of {_plural(p.view.replicas, 'instance')} serving"
        )
    return None


def _fail(p: _Pass, target: ReleaseView, cause: str) -> None:
    """Fail the release. With ``auto_revert`` its instances that take no traffic stop now;
    the serving ones keep serving until the current release stands without them (they are
    then instances of neither release, see ``_steady``); old instances that left the route
    but still run healthy rejoin it, up to the replica count."""
    p.finish(Fail(target.id, cause))
    if not target.strategy.auto_revert:
        return
    for i in [*p.live(target.id), *p.live(target.id, draining=True)]:
        if not i.serving:
            p.stop(i, f"release v{target.version} failed")
    current = p.view.current
    if current is None:
        return
    room = p.view.replicas - len(p.live(current.id))
    for i in sorted(p.live(current.id, draining=True), key=_recently_drained):
        if room <= 0:
            break
        if _healthy(i) and not _leaving(i):
            p.serve(i)
            room -= 1


def _old_first(
    current_id: uuid.UUID | None,
) -> Callable[[InstanceView], tuple[bool, bool, bool, float, str]]:
    """Old instances in the order they leave: not in the route, of neither release, on a
    node that takes no new work, oldest."""

    def key(i: InstanceView) -> tuple[bool, bool, bool, float, str]:
        return (
            _in_route(i),
            i.release_id == current_id,
            not _leaving(i),
            i.created_at,
            str(i.id),
        )

    return key


def _rolling(
    p: _Pass, target: ReleaseView, tgt: list[InstanceView], old: list[InstanceView]
) -> None:
    view, s = p.view, target.strategy
    replicas = view.replicas
    surge = s.max_surge if s.max_surge > 0 or s.max_unavailable > 0 else 1
    serving = _serve_ready(p, tgt, s, f"v{target.version}")
    in_route = sum(1 for i in serving if _healthy(i)) + sum(1 for i in old if _in_route(i))
    floor = max(0, replicas - s.max_unavailable)
    current_id = view.current.id if view.current is not None else None
    ordered = sorted(old, key=_old_first(current_id))
    _, kept = _leave_route(p, ordered, in_route - floor, f"replaced by v{target.version}")
    live = len(tgt) + len(kept)
    p.place(target.id, min(replicas + surge - live, replicas - len(tgt)))


def _bluegreen(
    p: _Pass, target: ReleaseView, tgt: list[InstanceView], old: list[InstanceView]
) -> None:
    s, replicas = target.strategy, p.view.replicas
    label = f"v{target.version}"
    for i in old:
        if not i.serving:
            p.stop(i, f"replaced by {label}")
    p.place(target.id, replicas - len(tgt))
    ready = [i for i in tgt if i.serving or _is_ready(i, s.min_healthy_time, p.now)]
    if len(tgt) < replicas or len(ready) < replicas:
        for i in tgt:
            at = _ready_at(i, s.min_healthy_time)
            if at is not None and at > p.now:
                p.timer(at, f"{label}: instance {_short(i)} healthy for {s.min_healthy_time:g} s")
        p.waiting(f"{label}: {len(ready)} of {_plural(replicas, 'instance')} ready")
        return
    for i in ready[:replicas]:
        if not i.serving:
            p.serve(i)
    for i in old:
        if i.serving:
            p.unserve(i)


def _immediate(
    p: _Pass, target: ReleaseView, tgt: list[InstanceView], old: list[InstanceView]
) -> None:
    label = f"v{target.version}"
    draining = [i for i in p.live(draining=True) if i.release_id != target.id]
    for i in [*old, *draining]:
        p.stop(i, f"immediate rollout to {label}")
    p.place(target.id, p.view.replicas - len(tgt))
    _serve_ready(p, tgt, target.strategy, label)


# --- steady state ----------------------------------------------------------------------


def _steady(p: _Pass) -> None:
    view, current = p.view, p.view.current
    if current is None:
        _leave_route(p, p.live(), len(p.instances), "no current release")
        return
    s, replicas = current.strategy, view.replicas
    label = f"v{current.version}"
    cur = p.live(current.id)
    good = [i for i in cur if not _leaving(i)]
    leaving = [i for i in cur if _leaving(i)]
    if len(good) > replicas:
        extras = sorted(good, key=_scale_down_first)[: len(good) - replicas]
        for i in extras:
            if i.serving:
                p.unserve(i)
            else:
                p.stop(i, "scaled down")
        good = [i for i in good if p.untouched(i)]
    room = replicas - len(good)
    rejoined = 0
    for i in sorted(p.live(current.id, draining=True), key=_recently_drained):
        if rejoined >= room:
            break
        if _healthy(i) and not _leaving(i):
            p.serve(i)
            rejoined += 1
    missing = room - rejoined
    if missing > 0:
        until = backoff_until(view.recent_failures, p.now)
        if until is None:
            p.place(current.id, missing)
        else:
            p.timer(until, f"{label}: back-off after recent failures")
    serving = _serve_ready(p, good, s, label)
    in_route = (
        sum(1 for i in serving if _healthy(i))
        + rejoined
        + sum(1 for i in leaving if _in_route(i))
        + sum(1 for i in p.others(current.id) if _in_route(i))
    )
    budget = in_route - replicas
    others = sorted(p.others(current.id), key=_old_first(current.id))
    budget, _ = _leave_route(p, others, budget, "not of the current release")
    _leave_route(p, sorted(leaving, key=_order), budget, "its node takes no new work")


def _scale_down_first(i: InstanceView) -> tuple[bool, float, str]:
    """Not in the route first, then newest first."""
    return (_in_route(i), -i.created_at, str(i.id))


def _recently_drained(i: InstanceView) -> tuple[float, str]:
    return (-(i.drain_started_at or 0.0), str(i.id))
