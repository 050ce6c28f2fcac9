"""Properties of the rollout planner: on arbitrary views (every state, health, drain and
node combination) and on whole simulated rollouts with faults injected along the way."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.operator.test_rollout_plan_sim import (
    App,
    Sim,
    check_applied,
    check_pass,
    in_route,
)
from zeitwork.core.states import HealthState, InstanceState
from zeitwork.operator.reconcile import rollout_plan as rp
from zeitwork.wire.releases import RolloutStrategy

NOW = 1000.0
CURRENT = uuid.UUID(int=0xC)
TARGET = uuid.UUID(int=0x7)
OTHER = uuid.UUID(int=0x0)
NODES = [uuid.UUID(int=0x100 + n) for n in range(3)]

strategies = st.builds(
    rp.ResolvedStrategy,
    type=st.sampled_from(["rolling", "bluegreen", "immediate"]),
    max_surge=st.integers(0, 3),
    max_unavailable=st.integers(0, 2),
    min_healthy_time=st.sampled_from([0.0, 1.0, 5.0]),
    drain_timeout=st.sampled_from([0.0, 5.0, 30.0]),
    progress_deadline=st.sampled_from([10.0, 300.0]),
    healthy_deadline=st.sampled_from([5.0, 120.0]),
    auto_revert=st.booleans(),
)


@st.composite
def instances(draw: st.DrawFn, n: int) -> rp.ReplicaView:
    state = draw(st.sampled_from(list(InstanceState)))
    health = draw(st.sampled_from(list(HealthState)))
    created = NOW - draw(st.sampled_from([0.0, 1.0, 3.0, 10.0, 200.0]))
    return rp.ReplicaView(
        id=uuid.UUID(int=0x1000 + n),
        release_id=draw(st.sampled_from([CURRENT, TARGET, OTHER, None])),
        node_id=draw(st.sampled_from([*NODES, None])),
        state=state,
        desired_state=draw(
            st.sampled_from(["running", "running", "running", "stopped", "terminated"])
        ),
        health=health,
        created_at=created,
        healthy_since=draw(st.sampled_from([None, created, NOW - 0.5, NOW])),
        serving=draw(st.booleans()),
        drain_started_at=draw(st.sampled_from([None, None, NOW - 40.0, NOW - 1.0, NOW])),
        node_schedulable=draw(st.booleans()),
        node_down=draw(st.booleans()),
        exit_code=draw(st.sampled_from([None, 0, 1, 137])),
        oom_killed=draw(st.booleans()),
        reason=draw(st.sampled_from([None, "crash loop: 5 restarts"])),
        last_check=draw(
            st.sampled_from([None, "GET /healthz -> 500", "connection refused on :8080"])
        ),
        log_tail=draw(st.sampled_from([(), ("boom",), tuple(str(k) for k in range(25))])),
    )


@st.composite
def views(draw: st.DrawFn) -> rp.EnvironmentView:
    has_current = draw(st.booleans())
    has_target = draw(st.booleans())
    count = draw(st.integers(0, 9))
    return rp.EnvironmentView(
        environment_id=uuid.UUID(int=1),
        now=NOW,
        replicas=draw(st.integers(0, 5)),
        current=rp.ReleaseView(CURRENT, 1, draw(strategies)) if has_current else None,
        target=rp.ReleaseView(TARGET, 2, draw(strategies)) if has_target else None,
        rollout_id=uuid.UUID(int=2) if has_target else None,
        rollout_started_at=NOW - draw(st.sampled_from([0.0, 5.0, 400.0])) if has_target else None,
        instances=tuple(draw(instances(n)) for n in range(count)),
        recent_failures=tuple(
            NOW - d
            for d in draw(st.lists(st.sampled_from([0.0, 0.5, 3.0, 100.0, 700.0]), max_size=8))
        ),
    )


def apply_view(view: rp.EnvironmentView, actions: list[rp.Action]) -> rp.EnvironmentView:
    """The view once a pass is applied (the same moment), as the releases reconciler does."""
    by_id = {i.id: i for i in view.instances}
    current, target = view.current, view.target
    placed = 0
    for a in actions:
        if isinstance(a, rp.Serve):
            by_id[a.instance_id] = dataclasses.replace(
                by_id[a.instance_id], serving=True, drain_started_at=None
            )
        elif isinstance(a, rp.Unserve):
            by_id[a.instance_id] = dataclasses.replace(
                by_id[a.instance_id], serving=False, drain_started_at=view.now if a.drain else None
            )
        elif isinstance(a, rp.Terminate):
            by_id[a.instance_id] = dataclasses.replace(
                by_id[a.instance_id], desired_state="terminated"
            )
        elif isinstance(a, rp.Place):
            for _ in range(a.count):
                placed += 1
                new = rp.ReplicaView(
                    id=uuid.UUID(int=0x9000 + placed),
                    release_id=a.release_id,
                    node_id=None,
                    state=InstanceState.PENDING,
                    desired_state="running",
                    health=HealthState.UNKNOWN,
                    created_at=view.now,
                )
                by_id[new.id] = new
        elif isinstance(a, rp.Promote):
            current, target = target, None
        elif isinstance(a, rp.Fail):
            target = None
    return dataclasses.replace(
        view, instances=tuple(by_id.values()), current=current, target=target
    )


@settings(max_examples=400, deadline=None)
@given(views())
def test_any_view_gives_a_well_formed_pass(view: rp.EnvironmentView) -> None:
    actions = rp.plan(view)
    check_pass(view, actions)
    check_applied(view, apply_view(view, actions), actions)


@settings(max_examples=200, deadline=None)
@given(views(), st.randoms(use_true_random=False))
def test_the_same_view_gives_the_same_actions(view: rp.EnvironmentView, random: Any) -> None:
    shuffled = list(view.instances)
    random.shuffle(shuffled)
    assert rp.plan(view) == rp.plan(dataclasses.replace(view, instances=tuple(shuffled)))


@settings(max_examples=300, deadline=None)
@given(views())
def test_an_applied_action_is_not_asked_for_again(view: rp.EnvironmentView) -> None:
    """Planning again at the same moment after applying a pass never repeats a Serve,
    Unserve or Stop of the same instance (no flapping, nothing the apply side must dedupe)."""
    first = rp.plan(view)
    after = apply_view(view, first)
    second = rp.plan(after)
    done = {a for a in first if isinstance(a, rp.Serve | rp.Unserve | rp.Terminate)}
    again = {a for a in second if isinstance(a, rp.Serve | rp.Unserve | rp.Terminate)}
    assert not done & again, (first, second)
    served = {a.instance_id for a in first if isinstance(a, rp.Serve)}
    unserved = {a.instance_id for a in second if isinstance(a, rp.Unserve | rp.Terminate)}
    if not any(isinstance(a, rp.Promote | rp.Fail) for a in first):
        assert not served & unserved, (first, second)


@settings(max_examples=300, deadline=None)
@given(views())
def test_serving_instances_never_drop_below_the_floor(view: rp.EnvironmentView) -> None:
    """Whatever the view, one pass keeps ``replicas - max_unavailable`` instances in the route
    (or as many as there were), except for the immediate strategy, which promises none."""
    actions = rp.plan(view)
    after = apply_view(view, actions)
    strategy = view.target.strategy if view.target else None
    if strategy is not None and strategy.type == "immediate":
        return
    if view.current is None and view.target is None:
        return  # no release to serve: everything leaves (tested case by case)
    floor = view.replicas - (strategy.max_unavailable if strategy else 0)
    before_n = sum(1 for i in view.instances if in_route(i))
    after_n = sum(1 for i in after.instances if in_route(i))
    assert after_n >= min(before_n, floor)


# --- whole rollouts with faults ---------------------------------------------------------------

faults = st.lists(
    st.tuples(
        st.floats(0, 60, allow_nan=False),
        st.sampled_from(["crash", "unhealthy", "drain_node", "scale", "undrain_node", "down_node"]),
        st.integers(0, 100),
    ),
    max_size=4,
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    replicas=st.integers(0, 5),
    strategy=strategies,
    kind=st.sampled_from(["good", "good", "crash", "never_listens", "http500", "oom"]),
    events=faults,
)
def test_a_rollout_always_ends_and_the_environment_settles(
    replicas: int, strategy: rp.ResolvedStrategy, kind: Any, events: list[tuple[float, str, int]]
) -> None:
    old = rp.ResolvedStrategy(min_healthy_time=1.0, drain_timeout=5.0)
    sim = Sim(replicas=replicas, strategy=old)
    start = sim.now
    target = sim.deploy(strategy, App(kind=kind))
    pending = sorted(events)
    while sim.target is not None:
        assert sim.now <= start + strategy.progress_deadline + 1.0, "past the progress deadline"
        while pending and start + pending[0][0] <= sim.now:
            _, what, pick = pending.pop(0)
            _inject(sim, what, pick)
        sim.step()
    ((promoted_or_failed),) = sim.outcome.promoted or [r for r, _ in sim.outcome.failed]
    assert promoted_or_failed == target.id
    if sim.outcome.failed:
        (_, cause) = sim.outcome.failed[0]
        assert cause.startswith(("instance ", "rollout to v2 did not finish"))
    sim.down.clear()  # the faults are over: nodes are back and take work again
    for node in sim.nodes:
        sim.schedulable[node] = True
        for i in list(sim.instances.values()):
            if i.node_id == node:
                sim.instances[i.id] = dataclasses.replace(i, node_schedulable=True, node_down=False)
    if kind != "good" and sim.outcome.promoted:
        return  # a bad release with no replicas to prove it bad: nothing settles
    sim.settle(limit=900)
    assert sim.current is not None
    assert len(sim.in_route(sim.current)) == sim.replicas
    assert len(sim.live()) == sim.replicas


def _inject(sim: Sim, what: str, pick: int) -> None:
    live = sorted(sim.live(), key=lambda i: i.id)
    if what == "crash" and live:
        victim = live[pick % len(live)]
        if victim.state == InstanceState.RUNNING:
            sim.crash(victim.id)
    elif what == "unhealthy" and live:
        victim = live[pick % len(live)]
        sim.instances[victim.id] = dataclasses.replace(
            victim, health=HealthState.UNHEALTHY, healthy_since=None, last_check="GET / -> 503"
        )
    elif what == "drain_node":
        sim.drain_node(pick % len(sim.nodes))
    elif what == "down_node" and not sim.down:
        sim.down_node(pick % len(sim.nodes))
    elif what == "undrain_node" and sim.nodes[pick % len(sim.nodes)] not in sim.down:
        node = sim.nodes[pick % len(sim.nodes)]
        sim.schedulable[node] = True
        for i in list(sim.instances.values()):
            if i.node_id == node:
                sim.instances[i.id] = dataclasses.replace(i, node_schedulable=True)
    elif what == "scale":
        sim.replicas = pick % 5


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    replicas=st.integers(1, 5),
    surge=st.one_of(st.integers(0, 3), st.sampled_from(["25%", "50%", "100%"])),
    unavailable=st.one_of(st.integers(0, 2), st.sampled_from(["0%", "25%", "50%"])),
    kind=st.sampled_from(["good", "good", "crash", "never_listens", "http500"]),
    bluegreen=st.booleans(),
    min_healthy_time=st.sampled_from([0.0, 1.0, 3.0]),
)
def test_without_faults_the_route_keeps_its_floor_and_surge_its_ceiling(
    replicas: int,
    surge: int | str,
    unavailable: int | str,
    kind: Any,
    bluegreen: bool,
    min_healthy_time: float,
) -> None:
    wire = RolloutStrategy(
        type="bluegreen" if bluegreen else "rolling",
        max_surge=surge,
        max_unavailable=unavailable,
        min_healthy_time=min_healthy_time,
        drain_timeout=5,
        healthy_deadline=20,
    )
    strategy = rp.ResolvedStrategy.from_wire(wire, replicas)
    sim = Sim(
        replicas=replicas, strategy=rp.ResolvedStrategy(min_healthy_time=1.0, drain_timeout=5.0)
    )
    target = sim.deploy(strategy, App(kind=kind))
    floor = replicas - strategy.max_unavailable
    ceiling = 2 * replicas if bluegreen else replicas + max(strategy.max_surge, 1)
    while sim.target is not None:
        sim.step()
        assert len(sim.in_route()) >= floor
        assert len([i for i in sim.live() if i.drain_started_at is None]) <= ceiling
    assert (sim.outcome.promoted == [target.id]) == (kind == "good")
    sim.settle()
    assert len(sim.in_route()) == replicas
    assert {i.release_id for i in sim.live()} == {sim.current.id if sim.current else None}
