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
- Drain end: an instance draining for ``drain_timeout`` s is stopped (``Terminate``).

How the rules are applied, where the rules above leave a choice:

- A pass lists ``Serve``, then ``Unserve``, then ``Terminate``, then ``Place``, then the release's
  ``Promote`` or ``Fail``; or it is one ``Wait`` alone (``until`` the earliest timer that
  can change the plan, always in the future, or None). At most one action per instance,
  except ``Unserve(drain=False)`` followed by ``Terminate`` for a serving instance stopped at once
  (an instance no longer wanted running that still serves only gets the ``Unserve``).
- ``Serve`` puts an instance in the route and ends its drain (``drain_started_at = None``):
  a draining instance that rejoins. ``Unserve`` clears ``serving``.
- "In the route" counts serving, running, healthy instances that do not drain. An instance
  that serves but is not healthy (the route table skips it) may leave at any time: it
  costs nothing against ``max_unavailable``. Of the old instances in the route, those of
  neither release leave first, then those on nodes taking no new work, then the oldest.
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
- An instance on a node that is down (``node_down``) is not healthy, whatever its last
  report says: it leaves the route without costing anything and is replaced like one on a
  draining node (a target instance there is stopped at once).
- ``max_surge`` 0 with ``max_unavailable`` 0 cannot make progress; it is taken as surge 1.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from zeitwork.operator.reconcile.rollout_instance import (
    backoff_until,
    by_age,
    ended_phrase,
    failure_cause,
    has_ended,
    in_route,
    is_healthy,
    is_leaving,
    is_live,
    plural,
    ready_at,
    short_id,
)
from zeitwork.operator.reconcile.rollout_view import (
    Action,
    EnvironmentView,
    Fail,
    Place,
    Promote,
    ReleaseView,
    ReplicaView,
    ResolvedStrategy,
    Serve,
    StrategyType,
    Terminate,
    Unserve,
    Wait,
)
from zeitwork.wire.releases import resolve_count

__all__ = [
    "Action",
    "EnvironmentView",
    "Fail",
    "Place",
    "Promote",
    "ReleaseView",
    "ReplicaView",
    "ResolvedStrategy",
    "Serve",
    "StrategyType",
    "Terminate",
    "Unserve",
    "Wait",
    "plan",
    "resolve_count",
]


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


# --- one pass --------------------------------------------------------------------------


class _Pass:
    """The actions of one pass being collected, in apply order, one decision per instance."""

    def __init__(self, view: EnvironmentView) -> None:
        self.view = view
        self.now = view.now
        self.instances = sorted(view.instances, key=by_age)
        self._serve: list[Serve] = []
        self._unserve: list[Unserve] = []
        self._stop: list[Terminate] = []
        self._place: list[Place] = []
        self._final: list[Promote | Fail] = []
        self._touched: set[uuid.UUID] = set()
        self._timers: list[tuple[float, str]] = []
        self._waiting: list[str] = []
        self._cleanup()

    # the instances still to decide on
    def live(
        self, release_id: uuid.UUID | None = None, *, draining: bool = False
    ) -> list[ReplicaView]:
        return [
            i
            for i in self.instances
            if i.id not in self._touched
            and is_live(i)
            and (i.drain_started_at is not None) == draining
            and (release_id is None or i.release_id == release_id)
        ]

    def others(self, *release_ids: uuid.UUID) -> list[ReplicaView]:
        """Live, not draining, of none of ``release_ids``."""
        return [i for i in self.live() if i.release_id not in release_ids]

    def serve(self, i: ReplicaView) -> None:
        self._touched.add(i.id)
        self._serve.append(Serve(i.id))

    def unserve(self, i: ReplicaView, *, drain: bool = True) -> None:
        self._touched.add(i.id)
        self._unserve.append(Unserve(i.id, drain=drain))

    def stop(self, i: ReplicaView, reason: str) -> None:
        """Terminate ``i``; a serving one leaves the route first, without a drain."""
        if i.serving:
            self._unserve.append(Unserve(i.id, drain=False))
        self._touched.add(i.id)
        self._stop.append(Terminate(i.id, reason))

    def untouched(self, i: ReplicaView) -> bool:
        return i.id not in self._touched

    def keep(self, i: ReplicaView) -> None:
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
            if has_ended(i):
                phrase = ended_phrase(i)
                self.stop(i, phrase if phrase.startswith("failed") else f"failed: {phrase}")
            elif not is_live(i):
                if i.serving:
                    self._unserve.append(Unserve(i.id, drain=False))
                self._touched.add(i.id)

    def _drain_ends(self) -> None:
        for i in self.live(draining=True):
            timeout = i.drain_timeout
            if timeout is None:
                timeout = self._strategy_of(i).drain_timeout
            ends = (i.drain_started_at or 0.0) + timeout
            if self.now >= ends:
                self.stop(i, "drained")
            else:
                self.timer(ends, "draining")

    def _strategy_of(self, i: ReplicaView) -> ResolvedStrategy:
        for release in (self.view.target, self.view.current):
            if release is not None and release.id == i.release_id:
                return release.strategy
        for release in (self.view.current, self.view.target):
            if release is not None:
                return release.strategy
        return ResolvedStrategy()

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
    p: _Pass, candidates: list[ReplicaView], budget: int, reason: str
) -> tuple[int, list[ReplicaView]]:
    """Serving ``candidates`` leave the route (drain) while the number in the route may
    drop by ``budget`` (one not in the route costs nothing); non-serving ones stop. The
    budget left and the candidates kept."""
    kept: list[ReplicaView] = []
    for i in candidates:
        if not i.serving:
            p.stop(i, reason)
        elif not in_route(i):
            p.unserve(i)
        elif budget > 0:
            p.unserve(i)
            budget -= 1
        else:
            p.keep(i)
            kept.append(i)
    return budget, kept


def _is_ready(i: ReplicaView, min_healthy_time: float, now: float) -> bool:
    at = ready_at(i, min_healthy_time)
    return at is not None and now >= at


def _serve_ready(
    p: _Pass, instances: list[ReplicaView], strategy: ResolvedStrategy, label: str
) -> list[ReplicaView]:
    """Serve the instances ready (healthy for ``min_healthy_time``); those now serving."""
    serving: list[ReplicaView] = []
    for i in instances:
        if i.serving:
            serving.append(i)
            continue
        ready = ready_at(i, strategy.min_healthy_time)
        if ready is not None and p.now >= ready:
            p.serve(i)
            serving.append(i)
        elif ready is not None:
            p.timer(
                ready,
                f"{label}: instance {short_id(i)} healthy for {strategy.min_healthy_time:g} s",
            )
        else:
            p.waiting(f"{label}: waiting for instance {short_id(i)} to become healthy")
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
        if i.node_down:
            p.stop(i, "its node is down")
        elif not i.serving and is_leaving(i):
            p.stop(i, "its node takes no new work")
        elif not i.serving and not is_healthy(i):
            p.timer(i.created_at + s.healthy_deadline, f"{label}: healthy deadline")
    tgt = [i for i in tgt if p.untouched(i)]
    if s.type == "bluegreen":
        _bluegreen(p, target, tgt, old)
    elif s.type == "immediate":
        _immediate(p, target, tgt, old)
    else:
        _rolling(p, target, tgt, old)


def _rollout_failure(p: _Pass, target: ReleaseView, tgt: list[ReplicaView]) -> str | None:
    s = target.strategy
    for i in p.instances:
        if i.release_id == target.id and has_ended(i):
            return failure_cause(i, target.version, healthy_deadline=s.healthy_deadline)
    for i in tgt:
        if not i.serving and not is_healthy(i) and p.now >= i.created_at + s.healthy_deadline:
            return failure_cause(i, target.version, healthy_deadline=s.healthy_deadline)
    started = p.view.rollout_started_at
    if started is not None and p.now >= started + s.progress_deadline:
        serving = sum(1 for i in tgt if i.serving)
        return (
            f"rollout to v{target.version} did not finish within {s.progress_deadline:g} s: "
            f"{serving} of {plural(p.view.replicas, 'instance')} serving"
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
        if is_healthy(i) and not is_leaving(i):
            p.serve(i)
            room -= 1


def _old_first(
    current_id: uuid.UUID | None,
) -> Callable[[ReplicaView], tuple[bool, bool, float, str]]:
    """Old instances in the order they leave the route: of neither release, on a node that
    takes no new work, oldest (those not in the route leave anyway, see ``_leave_route``)."""

    def key(i: ReplicaView) -> tuple[bool, bool, float, str]:
        return (
            i.release_id == current_id,
            not is_leaving(i),
            i.created_at,
            str(i.id),
        )

    return key


def _rolling(p: _Pass, target: ReleaseView, tgt: list[ReplicaView], old: list[ReplicaView]) -> None:
    view, s = p.view, target.strategy
    replicas = view.replicas
    surge = s.max_surge if s.max_surge > 0 or s.max_unavailable > 0 else 1
    serving = _serve_ready(p, tgt, s, f"v{target.version}")
    routed = sum(1 for i in serving if is_healthy(i)) + sum(1 for i in old if in_route(i))
    floor = max(0, replicas - s.max_unavailable)
    current_id = view.current.id if view.current is not None else None
    ordered = sorted(old, key=_old_first(current_id))
    _, kept = _leave_route(p, ordered, routed - floor, f"replaced by v{target.version}")
    live = len(tgt) + len(kept)
    p.place(target.id, min(replicas + surge - live, replicas - len(tgt)))


def _bluegreen(
    p: _Pass, target: ReleaseView, tgt: list[ReplicaView], old: list[ReplicaView]
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
            at = ready_at(i, s.min_healthy_time)
            if at is not None and at > p.now:
                p.timer(at, f"{label}: instance {short_id(i)} healthy for {s.min_healthy_time:g} s")
        p.waiting(f"{label}: {len(ready)} of {plural(replicas, 'instance')} ready")
        return
    for i in ready[:replicas]:
        if not i.serving:
            p.serve(i)
    for i in old:
        if i.serving:
            p.unserve(i)


def _immediate(
    p: _Pass, target: ReleaseView, tgt: list[ReplicaView], old: list[ReplicaView]
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
    good = [i for i in cur if not is_leaving(i)]
    leaving = [i for i in cur if is_leaving(i)]
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
        if is_healthy(i) and not is_leaving(i):
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
    routed = (
        sum(1 for i in serving if is_healthy(i))
        + rejoined
        + sum(1 for i in leaving if in_route(i))
        + sum(1 for i in p.others(current.id) if in_route(i))
    )
    budget = routed - replicas
    others = sorted(p.others(current.id), key=_old_first(current.id))
    budget, _ = _leave_route(p, others, budget, "not of the current release")
    _leave_route(p, sorted(leaving, key=by_age), budget, "its node takes no new work")


def _scale_down_first(i: ReplicaView) -> tuple[bool, float, str]:
    """Not in the route first, then newest first."""
    return (in_route(i), -i.created_at, str(i.id))


def _recently_drained(i: ReplicaView) -> tuple[float, str]:
    return (-(i.drain_started_at or 0.0), str(i.id))
