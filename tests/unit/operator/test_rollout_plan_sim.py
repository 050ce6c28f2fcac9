"""Whole rollouts driven through the pure planner by a small simulator: it applies each
pass's actions to the view as the releases reconciler would, advances time and lets the
instances evolve as their app does (start, turn healthy, crash, never listen, ...), and
checks the planner's promises after every pass."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from zeitwork.core.states import HealthState, InstanceState
from zeitwork.operator.reconcile import rollout_plan as rp
from zeitwork.wire.releases import RolloutStrategy

S = InstanceState
H = HealthState

AppKind = Literal["good", "crash", "oom", "never_listens", "http500", "exit0", "flaky"]

CRASH_LOGS = (*(f"line {n}" for n in range(30)), "ImportError: no module named 'flask'")


@dataclass(frozen=True)
class App:
    """How the instances of one release behave once placed."""

    kind: AppKind = "good"
    start_after: float = 1.0  # placed -> running
    healthy_after: float = 1.0  # running -> first healthy check
    fail_after: float = 2.0  # running -> the crash (crash, oom, exit0)


@dataclass
class Outcome:
    promoted: list[uuid.UUID] = field(default_factory=list)
    failed: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    passes: int = 0
    placed: int = 0


class Sim:
    """One environment: its releases, instances and nodes, and the apply side."""

    def __init__(
        self,
        *,
        replicas: int,
        strategy: rp.ResolvedStrategy | None = None,
        app: App | None = None,
        nodes: int = 3,
        now: float = 1000.0,
        check: bool = True,
        capacity: int | None = None,
    ) -> None:
        self.now = now
        self.capacity = capacity  # instances per node (None: no limit)
        self.replicas = replicas
        self.check = check
        self._ids = (uuid.UUID(int=n) for n in itertools.count(1))
        self.nodes = [uuid.UUID(int=10**6 + n) for n in range(nodes)]
        self.schedulable = {n: True for n in self.nodes}
        self.down: set[uuid.UUID] = set()
        self._busy = 0
        self._end = now + 7200  # no test needs longer: a loop waiting on a condition ends
        self._next_node = 0
        self.apps: dict[uuid.UUID, App] = {}
        self.versions = itertools.count(1)
        self.instances: dict[uuid.UUID, rp.ReplicaView] = {}
        self.failures: list[float] = []
        self.target: rp.ReleaseView | None = None
        self.rollout_started_at: float | None = None
        self.outcome = Outcome()
        self.history: list[list[rp.Action]] = []
        self.current = self.release(strategy or rp.ResolvedStrategy(), app or App())
        # the current release starts healthy and serving
        for k in range(replicas):
            inst = self._new_instance(self.current.id)
            self.instances[inst.id] = dataclasses.replace(
                inst,
                state=S.RUNNING,
                health=H.HEALTHY,
                healthy_since=now - 100,
                serving=True,
                created_at=now - 100 + k,
            )

    # --- releases -------------------------------------------------------------------------

    def release(self, strategy: rp.ResolvedStrategy, app: App) -> rp.ReleaseView:
        r = rp.ReleaseView(id=next(self._ids), version=next(self.versions), strategy=strategy)
        self.apps[r.id] = app
        return r

    def deploy(
        self, strategy: rp.ResolvedStrategy | None = None, app: App | None = None
    ) -> rp.ReleaseView:
        """Start a rollout to a new release (a running one is superseded)."""
        self.target = self.release(strategy or rp.ResolvedStrategy(), app or App())
        self.rollout_started_at = self.now
        return self.target

    # --- the view and the apply side ------------------------------------------------------

    def view(self) -> rp.EnvironmentView:
        return rp.EnvironmentView(
            environment_id=uuid.UUID(int=999),
            now=self.now,
            replicas=self.replicas,
            current=self.current,
            target=self.target,
            rollout_id=uuid.UUID(int=998) if self.target else None,
            rollout_started_at=self.rollout_started_at if self.target else None,
            instances=tuple(self.instances.values()),
            recent_failures=tuple(t for t in self.failures if self.now - t <= 600),
        )

    def _new_instance(self, release_id: uuid.UUID) -> rp.ReplicaView:
        node = self._pick_node()
        return rp.ReplicaView(
            id=next(self._ids),
            release_id=release_id,
            node_id=node,
            state=S.PENDING,
            desired_state="running",
            health=H.UNKNOWN,
            created_at=self.now,
        )

    def _pick_node(self) -> uuid.UUID | None:
        for _ in self.nodes:
            node = self.nodes[self._next_node % len(self.nodes)]
            self._next_node += 1
            if self.schedulable[node] and self._has_room(node):
                return node
        return None

    def _has_room(self, node: uuid.UUID) -> bool:
        if self.capacity is None:
            return True
        held = sum(1 for i in self.instances.values() if i.node_id == node)
        return held < self.capacity

    def apply(self, actions: list[rp.Action]) -> None:
        for a in actions:
            if isinstance(a, rp.Place):
                for _ in range(a.count):
                    inst = self._new_instance(a.release_id)
                    self.instances[inst.id] = inst
                    self.outcome.placed += 1
            elif isinstance(a, rp.Serve):
                self._set(a.instance_id, serving=True, drain_started_at=None)
            elif isinstance(a, rp.Unserve):
                self._set(
                    a.instance_id,
                    serving=False,
                    drain_started_at=self.now if a.drain else None,
                )
            elif isinstance(a, rp.Terminate):
                self._set(a.instance_id, desired_state="terminated")
            elif isinstance(a, rp.Promote):
                assert self.target is not None and a.release_id == self.target.id
                self.current, self.target = self.target, None
                self.outcome.promoted.append(a.release_id)
            elif isinstance(a, rp.Fail):
                assert self.target is not None and a.release_id == self.target.id
                self.target = None
                self.outcome.failed.append((a.release_id, a.cause))

    def _set(self, instance_id: uuid.UUID, **changes: object) -> None:
        self.instances[instance_id] = dataclasses.replace(
            self.instances[instance_id],
            **changes,  # type: ignore[arg-type]
        )

    # --- the world ------------------------------------------------------------------------

    def drain_node(self, index: int) -> uuid.UUID:
        node = self.nodes[index]
        self.schedulable[node] = False
        for i in list(self.instances.values()):
            if i.node_id == node:
                self._set(i.id, node_schedulable=False)
        return node

    def down_node(self, index: int) -> uuid.UUID:
        """The node stops reporting: what it runs is frozen as last seen."""
        node = self.nodes[index]
        self.schedulable[node] = False
        self.down.add(node)
        for i in list(self.instances.values()):
            if i.node_id == node:
                self._set(i.id, node_schedulable=False, node_down=True)
        return node

    def crash(self, instance_id: uuid.UUID, *, code: int = 1) -> None:
        i = self.instances[instance_id]
        self._set(
            instance_id,
            state=S.FAILED,
            exit_code=code,
            health=H.UNHEALTHY,
            healthy_since=None,
        )
        if self.current is not None and i.release_id == self.current.id:
            self.failures.append(self.now)

    def advance(self, dt: float) -> None:
        self.now += dt
        for i in list(self.instances.values()):
            if i.node_id in self.down:
                continue  # nothing more is heard of it
            if i.desired_state != "running":
                del self.instances[i.id]  # the agent stops it; terminated ones leave the view
                continue
            if i.state in (S.FAILED, S.STOPPED) or i.release_id is None:
                continue
            self._evolve(i, self.apps[i.release_id])

    def _evolve(self, i: rp.ReplicaView, app: App) -> None:
        if i.node_id is None:  # the scheduler tries again
            node = self._pick_node()
            if node is None:
                return
            self._set(i.id, node_id=node)
        age = self.now - i.created_at
        if i.state == S.PENDING and age >= app.start_after:
            self._set(i.id, state=S.RUNNING)
        i = self.instances[i.id]
        if i.state != S.RUNNING:
            return
        up = age - app.start_after
        if app.kind in ("crash", "oom", "exit0") and up >= app.fail_after:
            self._set(
                i.id,
                state=S.STOPPED if app.kind == "exit0" else S.FAILED,
                exit_code={"crash": 1, "oom": 137, "exit0": 0}[app.kind],
                oom_killed=app.kind == "oom",
                health=H.UNHEALTHY,
                last_check="connection refused on :8080",
                log_tail=CRASH_LOGS,
                reason="crash loop: 5 restarts" if app.kind == "crash" else None,
            )
            if self.current is not None and i.release_id == self.current.id:
                self.failures.append(self.now)
            return
        if up < app.healthy_after:
            return
        if app.kind in ("never_listens", "crash", "oom", "exit0"):
            self._set(i.id, health=H.UNHEALTHY, last_check="connection refused on :8080")
        elif app.kind == "http500":
            self._set(i.id, health=H.UNHEALTHY, last_check="GET /healthz -> 500")
        elif i.health != H.HEALTHY:
            self._set(i.id, health=H.HEALTHY, healthy_since=self.now, last_check="GET / -> 200")

    # --- driving ----------------------------------------------------------------------------

    def step(self, tick: float = 0.5) -> list[rp.Action]:
        """One pass: plan, check, apply; time moves on when the pass only waits."""
        assert self.now < self._end, f"two simulated hours: {self.history[-3:]}"
        view = self.view()
        actions = rp.plan(view)
        if self.check:
            check_pass(view, actions)
        self.history.append(actions)
        self.outcome.passes += 1
        before = view
        self.apply(actions)
        if self.check:
            check_applied(before, self.view(), actions)
        if all(isinstance(a, rp.Wait) for a in actions):
            self.advance(tick)
            self._busy = 0
        else:
            self._busy += 1  # applied and planning again at the same moment
            assert self._busy < 30, f"no time passes: {self.history[-3:]}"
        return actions

    def run_rollout(self, *, limit: float = 600.0) -> None:
        """Until the rollout ends (Promote or Fail)."""
        deadline = self.now + limit
        while self.target is not None:
            assert self.now < deadline, "the rollout did not end"
            self.step()

    def settle(self, *, limit: float = 300.0) -> None:
        """Until nothing is left to do and no timer runs."""
        deadline = self.now + limit
        while True:
            assert self.now < deadline, f"never settles: {self.history[-3:]}"
            actions = self.step()
            if actions == [rp.Wait("steady")] and self.target is None:
                return

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step()

    # --- what is there ----------------------------------------------------------------------

    def live(self, release: rp.ReleaseView | None = None) -> list[rp.ReplicaView]:
        return [
            i
            for i in self.instances.values()
            if i.desired_state == "running"
            and i.state not in (S.FAILED, S.STOPPED, S.TERMINATED)
            and (release is None or i.release_id == release.id)
        ]

    def in_route(self, release: rp.ReleaseView | None = None) -> list[rp.ReplicaView]:
        return [i for i in self.live(release) if in_route(i)]


def in_route(i: rp.ReplicaView) -> bool:
    return (
        i.serving
        and i.drain_started_at is None
        and i.state == S.RUNNING
        and i.health == H.HEALTHY
        and i.desired_state == "running"
        and not i.node_down
    )


def live_not_draining(view: rp.EnvironmentView) -> list[rp.ReplicaView]:
    return [
        i
        for i in view.instances
        if i.desired_state == "running"
        and i.state not in (S.FAILED, S.STOPPED, S.TERMINATED)
        and i.drain_started_at is None
    ]


def check_pass(view: rp.EnvironmentView, actions: list[rp.Action]) -> None:
    """What every pass's list must look like, whatever the view."""
    assert actions, "a pass always says something"
    by_id = {i.id: i for i in view.instances}
    waits = [a for a in actions if isinstance(a, rp.Wait)]
    if waits:
        assert len(actions) == 1, "a Wait comes alone"
        assert waits[0].until is None or waits[0].until > view.now
        assert waits[0].reason
    finals = [a for a in actions if isinstance(a, rp.Promote | rp.Fail)]
    assert len(finals) <= 1
    if finals:
        assert actions[-1] is finals[0], "the release's state change comes last"
        assert view.target is not None and finals[0].release_id == view.target.id
    kinds = [type(a) for a in actions if not isinstance(a, rp.Wait | rp.Promote | rp.Fail)]
    order = [rp.Serve, rp.Unserve, rp.Terminate, rp.Place]
    assert kinds == sorted(kinds, key=order.index), "serve, unserve, stop, place"
    seen: dict[uuid.UUID, list[rp.Action]] = {}
    for a in actions:
        if isinstance(a, rp.Serve | rp.Unserve | rp.Terminate):
            assert a.instance_id in by_id
            seen.setdefault(a.instance_id, []).append(a)
    for instance_id, acts in seen.items():
        inst = by_id[instance_id]
        if len(acts) == 2:
            unserve, stop = acts
            assert unserve == rp.Unserve(instance_id, drain=False) and isinstance(
                stop, rp.Terminate
            )
        else:
            assert len(acts) == 1, acts
        for a in acts:
            if isinstance(a, rp.Serve):
                assert inst.state == S.RUNNING and inst.health == H.HEALTHY
                assert inst.desired_state == "running" and not inst.node_down
                assert inst.node_schedulable or inst.node_id is None
                assert not inst.serving or inst.drain_started_at is not None
            if isinstance(a, rp.Unserve):
                assert inst.serving
            if isinstance(a, rp.Terminate):
                assert inst.desired_state == "running"
                assert a.reason
    for a in actions:
        if isinstance(a, rp.Place):
            assert a.count > 0
            assert a.release_id in {r.id for r in (view.current, view.target) if r is not None}


def check_applied(
    before: rp.EnvironmentView, after: rp.EnvironmentView, actions: list[rp.Action]
) -> None:
    """The promises that compare the view before a pass with the view once it is applied."""
    if before.target is not None:
        strategy = before.target.strategy
        floor = before.replicas - strategy.max_unavailable
    else:
        strategy = before.current.strategy if before.current else rp.ResolvedStrategy()
        floor = before.replicas
    serves_a_release = before.current is not None or before.target is not None
    if serves_a_release and (strategy.type != "immediate" or before.target is None):
        was = sum(1 for i in before.instances if in_route(i))
        now = sum(1 for i in after.instances if in_route(i))
        assert now >= min(was, floor), f"in the route {was} -> {now}, floor {floor}: {actions}"
    for a in actions:
        if isinstance(a, rp.Place):
            mine = [i for i in live_not_draining(after) if i.release_id == a.release_id]
            schedulable = [i for i in mine if i.node_schedulable or i.node_id is None]
            assert len(schedulable) <= before.replicas, "never more than replicas of a release"
            if before.target is not None and strategy.type == "rolling":
                surge = max(strategy.max_surge, 0 if strategy.max_unavailable else 1)
                total = len(live_not_draining(after))
                assert total <= max(len(live_not_draining(before)), before.replicas + surge)


# --- whole rollouts ---------------------------------------------------------------------------


def rolling(**kw: object) -> rp.ResolvedStrategy:
    return rp.ResolvedStrategy(min_healthy_time=2.0, drain_timeout=5.0, **kw)  # type: ignore[arg-type]


def assert_promoted_and_clean(sim: Sim, release: rp.ReleaseView) -> None:
    assert sim.outcome.promoted == [release.id]
    assert sim.outcome.failed == []
    sim.settle()
    assert len(sim.in_route(release)) == sim.replicas
    assert {i.release_id for i in sim.live()} <= {release.id}
    assert len(sim.live()) == sim.replicas
    assert all(i.desired_state == "running" for i in sim.instances.values())


def max_live_not_draining(sim: Sim) -> int:
    return max(len(live_not_draining(v)) for v in [sim.view()])


def test_rolling_three_replicas_surge_one() -> None:
    sim = Sim(replicas=3, strategy=rolling())
    v2 = sim.deploy(rolling())
    peak = 0
    while sim.target is not None:
        sim.step()
        peak = max(peak, len(live_not_draining(sim.view())))
        assert len(sim.in_route()) >= 3
    assert peak == 4  # replicas + max_surge, never more
    assert_promoted_and_clean(sim, v2)
    placements = [a for acts in sim.history for a in acts if isinstance(a, rp.Place)]
    assert [a.count for a in placements if a.release_id == v2.id] == [1, 1, 1]


def test_rolling_surge_percentage_resolves_up() -> None:
    strategy = rp.ResolvedStrategy.from_wire(_wire(max_surge="25%", min_healthy_time=1), 4)
    assert strategy.max_surge == 1
    sim = Sim(replicas=4, strategy=strategy)
    v2 = sim.deploy(strategy)
    while sim.target is not None:
        sim.step()
        assert len(live_not_draining(sim.view())) <= 5
        assert len(sim.in_route()) >= 4
    assert_promoted_and_clean(sim, v2)


def test_rolling_max_unavailable_one_without_surge() -> None:
    strategy = rolling(max_surge=0, max_unavailable=1)
    sim = Sim(replicas=3, strategy=strategy)
    v2 = sim.deploy(strategy)
    while sim.target is not None:
        sim.step()
        assert len(sim.in_route()) >= 2
        assert len(live_not_draining(sim.view())) <= 3
    assert_promoted_and_clean(sim, v2)


def test_rolling_with_surge_and_unavailable_is_faster() -> None:
    slow = Sim(replicas=4, strategy=rolling())
    slow.deploy(rolling())
    slow.run_rollout()
    fast = Sim(replicas=4, strategy=rolling())
    fast.deploy(rolling(max_surge=2, max_unavailable=1))
    fast.run_rollout()
    assert fast.outcome.promoted and slow.outcome.promoted
    assert fast.now < slow.now


def test_zero_surge_and_zero_unavailable_still_moves_one_at_a_time() -> None:
    strategy = rolling(max_surge=0, max_unavailable=0)
    sim = Sim(replicas=2, strategy=strategy)
    v2 = sim.deploy(strategy)
    sim.run_rollout()
    assert_promoted_and_clean(sim, v2)


def test_first_release_places_every_replica_at_once() -> None:
    sim = Sim(replicas=0)
    sim.replicas = 3
    v1 = sim.deploy(rolling())
    first = sim.step()
    assert first == [rp.Place(v1.id, 3)]
    sim.run_rollout()
    assert_promoted_and_clean(sim, v1)


def test_bluegreen_switches_in_one_pass() -> None:
    strategy = rp.ResolvedStrategy(type="bluegreen", min_healthy_time=2.0, drain_timeout=5.0)
    sim = Sim(replicas=3, strategy=strategy)
    v2 = sim.deploy(strategy)
    assert sim.step() == [rp.Place(v2.id, 3)]
    switch: list[rp.Action] = []
    while sim.target is not None:
        actions = sim.step()
        if any(isinstance(a, rp.Serve) for a in actions):
            assert not switch, "the route switches once"
            switch = actions
        # until the switch only v1 serves, after it only v2
        versions = {i.release_id for i in sim.in_route()}
        assert len(versions) == 1
        assert len(sim.in_route()) == 3
    assert [type(a) for a in switch] == [rp.Serve] * 3 + [rp.Unserve] * 3
    assert all(a.drain for a in switch if isinstance(a, rp.Unserve))
    assert_promoted_and_clean(sim, v2)


def test_immediate_stops_old_first_then_serves_new() -> None:
    strategy = rp.ResolvedStrategy(type="immediate", min_healthy_time=0.0)
    sim = Sim(replicas=2, strategy=strategy)
    old = [i.id for i in sim.live()]
    v2 = sim.deploy(strategy)
    first = sim.step()
    assert first == [
        rp.Unserve(old[0], drain=False),
        rp.Unserve(old[1], drain=False),
        rp.Terminate(old[0], "immediate rollout to v2"),
        rp.Terminate(old[1], "immediate rollout to v2"),
        rp.Place(v2.id, 2),
    ]
    sim.run_rollout()
    assert_promoted_and_clean(sim, v2)


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("crash", "exited with code 1 (crash loop: 5 restarts)"),
        ("oom", "was killed: out of memory"),
        ("exit0", "exited with code 0"),
        (
            "never_listens",
            "not healthy 30 s after it was placed (last check: connection refused on :8080)",
        ),
        ("http500", "not healthy 30 s after it was placed (last check: GET /healthz -> 500)"),
    ],
)
@pytest.mark.parametrize("strategy_type", ["rolling", "bluegreen", "immediate"])
def test_a_bad_release_fails_and_the_current_one_heals_back(
    kind: AppKind, cause: str, strategy_type: rp.StrategyType
) -> None:
    strategy = rp.ResolvedStrategy(
        type=strategy_type, min_healthy_time=1.0, drain_timeout=5.0, healthy_deadline=30.0
    )
    sim = Sim(replicas=3, strategy=rp.ResolvedStrategy(min_healthy_time=1.0, drain_timeout=5.0))
    v1 = sim.current
    v2 = sim.deploy(strategy, App(kind=kind))
    sim.run_rollout()
    assert sim.outcome.promoted == []
    ((failed, text),) = sim.outcome.failed
    assert failed == v2.id
    first_line = text.splitlines()[0]
    assert first_line.startswith("instance ") and f" of v2 {cause}" in first_line
    if kind in ("crash", "oom", "exit0"):
        assert text.splitlines()[1] == "last log lines:"
        assert text.splitlines()[2:] == list(CRASH_LOGS[-20:])
    if strategy_type != "immediate":
        # the current release never stopped serving
        assert len(sim.in_route(v1)) == 3
    sim.settle()
    assert sim.current == v1
    assert len(sim.in_route(v1)) == 3
    assert sim.live(v2) == []
    assert len(sim.live()) == 3


def test_failure_while_old_instances_drain_lets_them_rejoin() -> None:
    strategy = rp.ResolvedStrategy(
        min_healthy_time=0.5, drain_timeout=30.0, max_surge=2, healthy_deadline=20.0
    )
    sim = Sim(replicas=3, strategy=strategy)
    v1 = sim.current
    v2 = sim.deploy(strategy)
    # let two v2 instances serve and two v1 instances leave, then v2 turns out bad
    while len(sim.in_route(v2)) < 2:
        sim.step()
    sim.step()
    draining = [i for i in sim.live(v1) if i.drain_started_at is not None]
    assert len(draining) == 2
    bad = sim.in_route(v2)[0]
    sim.crash(bad.id)
    actions = sim.step()
    assert isinstance(actions[-1], rp.Fail)
    assert {a.instance_id for a in actions if isinstance(a, rp.Serve)} == {i.id for i in draining}
    assert sim.outcome.failed and "exited with code 1" in sim.outcome.failed[0][1]
    sim.settle()
    assert len(sim.in_route(v1)) == 3
    assert sim.live(v2) == []
    # the rejoined ones were kept: no v1 instance was placed to heal
    assert all(i.created_at < 1000 for i in sim.live(v1))


def test_progress_deadline_fails_a_rollout_that_cannot_finish() -> None:
    strategy = rp.ResolvedStrategy(
        min_healthy_time=1.0, progress_deadline=20.0, healthy_deadline=60.0
    )
    sim = Sim(replicas=2, strategy=strategy, nodes=1)
    sim.drain_node(0)  # nowhere to place anything
    v2 = sim.deploy(strategy)
    sim.run_rollout()
    ((failed, text),) = sim.outcome.failed
    assert failed == v2.id
    assert text == "rollout to v2 did not finish within 20 s: 0 of 2 instances serving"
    assert sim.now - 1000 == pytest.approx(20.0, abs=0.6)


def test_healthy_deadline_fails_an_instance_stuck_pending() -> None:
    strategy = rp.ResolvedStrategy(healthy_deadline=10.0)
    sim = Sim(replicas=1, strategy=strategy)
    sim.deploy(strategy, App(start_after=1000.0))
    sim.run_rollout()
    ((_, text),) = sim.outcome.failed
    assert text.endswith(
        "not healthy 10 s after it was placed (pending, no health check result yet)"
    )


def test_steady_scale_up_and_down() -> None:
    sim = Sim(replicas=3, strategy=rolling())
    v1 = sim.current
    sim.replicas = 5
    assert sim.step() == [rp.Place(v1.id, 2)]
    sim.settle()
    assert len(sim.in_route(v1)) == 5
    oldest, *newer = sorted(sim.live(v1), key=lambda i: i.created_at)
    sim.replicas = 1
    actions = sim.step()
    # newest first: the oldest stays
    assert sorted(actions, key=str) == sorted((rp.Unserve(i.id) for i in newer), key=str)
    sim.settle()
    assert [i.id for i in sim.in_route(v1)] == [oldest.id]
    assert len(sim.live(v1)) == 1
    sim.replicas = 3
    sim.settle()
    assert len(sim.in_route(v1)) == 3


def test_scale_down_prefers_instances_not_in_the_route() -> None:
    sim = Sim(replicas=2, strategy=rolling())
    v1 = sim.current
    sim.replicas = 3
    sim.step()  # places one, still pending
    sim.replicas = 2
    pending = [i for i in sim.live(v1) if i.state == S.PENDING]
    assert sim.step() == [rp.Terminate(pending[0].id, "scaled down")]


def test_scale_up_during_drain_rejoins_the_drainers() -> None:
    sim = Sim(replicas=3, strategy=rolling())
    v1 = sim.current
    sim.replicas = 1
    sim.step()
    sim.replicas = 3
    actions = sim.step()
    assert [type(a) for a in actions] == [rp.Serve, rp.Serve]
    assert len(sim.in_route(v1)) == 3


def test_failed_instances_are_replaced_with_back_off() -> None:
    sim = Sim(replicas=2, strategy=rolling())
    v1 = sim.current
    gaps: list[float] = []
    for _ in range(8):
        victim = sim.live(v1)[0]
        sim.crash(victim.id)
        crashed_at = sim.now
        actions = sim.step()
        assert actions == [
            rp.Unserve(victim.id, drain=False),
            rp.Terminate(victim.id, "failed: exited with code 1"),
        ]
        while not any(isinstance(a, rp.Place) for a in actions):
            actions = sim.step()
        gaps.append(sim.now - crashed_at)
        sim.settle()
    # 1, 2, 4, 8, 16, 32, 60, 60 s (placed on the first pass at or after the back-off)
    assert gaps == pytest.approx([1, 2, 4, 8, 16, 32, 60, 60], abs=0.51)


def test_node_drain_replaces_before_it_unserves() -> None:
    sim = Sim(replicas=3, strategy=rolling(), nodes=3)
    v1 = sim.current
    node = sim.drain_node(0)
    on_node = [i for i in sim.live(v1) if i.node_id == node]
    assert len(on_node) == 1
    actions = sim.step()
    assert actions == [rp.Place(v1.id, 1)]
    while on_node[0].id in {i.id for i in sim.in_route()}:
        sim.step()
        assert len(sim.in_route(v1)) >= 3
    sim.settle()
    assert len(sim.in_route(v1)) == 3
    assert all(i.node_id != node for i in sim.live())


def test_node_drain_with_nowhere_to_go_keeps_serving() -> None:
    sim = Sim(replicas=1, strategy=rolling(), nodes=1)
    v1 = sim.current
    sim.drain_node(0)
    sim.run_for(60)
    assert len(sim.in_route(v1)) == 1
    assert len(sim.instances) == 2  # the one serving and its pending replacement


def test_superseded_rollout_instances_are_replaced() -> None:
    strategy = rolling(max_surge=1)
    sim = Sim(replicas=3, strategy=strategy)
    v2 = sim.deploy(strategy)
    while len(sim.in_route(v2)) < 1:
        sim.step()
    sim.step()
    v3 = sim.deploy(strategy)  # v2 is superseded mid-way
    while sim.target is not None:
        sim.step()
        assert len(sim.in_route()) >= 3
    assert_promoted_and_clean(sim, v3)
    assert sim.live(v2) == []


def test_a_superseded_release_left_serving_leaves_once_current_stands() -> None:
    sim = Sim(replicas=2, strategy=rolling())
    v1 = sim.current
    # instances of an earlier release still serve beside v1's
    for inst in list(sim.live(v1)):
        sim.instances[inst.id] = dataclasses.replace(inst, release_id=uuid.UUID(int=777))
    sim.apps[uuid.UUID(int=777)] = App()
    first = sim.step()
    assert first == [rp.Place(v1.id, 2)]
    while sim.live(v1) == [] or len(sim.in_route(v1)) < 2:
        sim.step()
        assert len(sim.in_route()) >= 2
    sim.settle()
    assert {i.release_id for i in sim.live()} == {v1.id}


def test_target_crash_loop_during_steady_current_failures() -> None:
    # the current release's own failures do not block a rollout to a good release
    sim = Sim(replicas=2, strategy=rolling())
    sim.crash(sim.live()[0].id)
    v2 = sim.deploy(rolling())
    sim.run_rollout()
    assert_promoted_and_clean(sim, v2)


def test_the_same_view_gives_the_same_actions_in_any_order() -> None:
    sim = Sim(replicas=4, strategy=rolling(max_surge=2))
    sim.deploy(rolling(max_surge=2))
    for _ in range(40):
        view = sim.view()
        shuffled = dataclasses.replace(view, instances=tuple(reversed(view.instances)))
        assert rp.plan(view) == rp.plan(shuffled) == rp.plan(view)
        sim.step()


def _wire(**kw: Any) -> RolloutStrategy:
    return RolloutStrategy(**kw)


def test_no_room_for_a_surge_proceeds_with_max_unavailable() -> None:
    strategy = rolling(max_surge=1, max_unavailable=1)
    sim = Sim(replicas=3, strategy=rolling(), nodes=3, capacity=1)
    v2 = sim.deploy(strategy)
    while sim.target is not None:
        sim.step()
        assert len(sim.in_route()) >= 2
        assert len(sim.instances) <= 3 + 2  # placed ones wait for room without a node
    assert_promoted_and_clean(sim, v2)


def test_no_room_for_a_surge_without_max_unavailable_fails_and_v1_keeps_serving() -> None:
    strategy = rp.ResolvedStrategy(progress_deadline=30.0, healthy_deadline=60.0)
    sim = Sim(replicas=3, strategy=rolling(), nodes=3, capacity=1)
    v1 = sim.current
    sim.deploy(strategy)
    while sim.target is not None:
        sim.step()
        assert len(sim.in_route(v1)) == 3
    ((_, cause),) = sim.outcome.failed
    assert cause == "rollout to v2 did not finish within 30 s: 0 of 3 instances serving"
    sim.settle()
    assert len(sim.in_route(v1)) == 3 and len(sim.instances) == 3


@pytest.mark.parametrize("new_replicas", [1, 5])
def test_scaling_during_a_rollout(new_replicas: int) -> None:
    sim = Sim(replicas=3, strategy=rolling())
    v2 = sim.deploy(rolling())
    while not sim.in_route(v2):
        sim.step()
    sim.replicas = new_replicas
    while sim.target is not None:
        sim.step()
        assert len(sim.in_route()) >= min(3, new_replicas)
    assert_promoted_and_clean(sim, v2)


def test_a_three_replica_rolling_update_takes_three_health_waits() -> None:
    """Surge 1: one new instance at a time, each 1 s to start, 1 s to its first healthy
    check and ``min_healthy_time`` (2 s) before it serves."""
    sim = Sim(replicas=3, strategy=rolling())
    sim.deploy(rolling())
    start = sim.now
    sim.run_rollout()
    assert sim.outcome.promoted
    assert sim.now - start == pytest.approx(3 * (1 + 1 + 2), abs=1.0)


def test_a_node_down_mid_rollout() -> None:
    sim = Sim(replicas=3, strategy=rolling(), nodes=4)
    v1 = sim.current
    v2 = sim.deploy(rolling())
    while not sim.in_route(v2):
        sim.step()
    lost = sim.in_route(v2)[0]
    assert lost.node_id is not None
    node = sim.down_node(sim.nodes.index(lost.node_id))
    while sim.target is not None:
        sim.step()
        assert len(sim.in_route()) >= 1
    assert sim.outcome.promoted == [v2.id]
    sim.run_for(60)
    assert len(sim.in_route(v2)) == 3
    assert all(i.node_id != node for i in sim.live())
    assert not [i for i in sim.live(v1)]
