"""The rollout planner's pieces, case by case: counts, back-off, failure causes, and one
pass over small hand-written views for each rule."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from zeitwork.core.states import HealthState, InstanceState
from zeitwork.operator.reconcile import rollout_plan as rp
from zeitwork.operator.reconcile.rollout_instance import (
    backoff_delay,
    backoff_until,
    failure_cause,
)
from zeitwork.wire.releases import RolloutStrategy

S = InstanceState
H = HealthState
NOW = 1000.0
V1 = rp.ReleaseView(
    uuid.UUID(int=0xA1), 1, rp.ResolvedStrategy(min_healthy_time=5.0, drain_timeout=30.0)
)
V2 = rp.ReleaseView(
    uuid.UUID(int=0xA2), 2, rp.ResolvedStrategy(min_healthy_time=5.0, drain_timeout=30.0)
)
NODE = uuid.UUID(int=0xB0)


def inst(n: int, release: rp.ReleaseView | None = V1, **kw: Any) -> rp.ReplicaView:
    """A running, healthy, serving instance (healthy for long), unless told otherwise."""
    base: dict[str, Any] = {
        "id": uuid.UUID(int=n),
        "release_id": None if release is None else release.id,
        "node_id": NODE,
        "state": S.RUNNING,
        "desired_state": "running",
        "health": H.HEALTHY,
        "created_at": NOW - 500 + n,
        "healthy_since": NOW - 400,
        "serving": True,
    }
    base.update(kw)
    return rp.ReplicaView(**base)


def pending(n: int, release: rp.ReleaseView = V2, age: float = 1.0) -> rp.ReplicaView:
    return inst(
        n,
        release,
        state=S.PENDING,
        health=H.UNKNOWN,
        healthy_since=None,
        serving=False,
        created_at=NOW - age,
    )


def view(*instances: rp.ReplicaView, **kw: Any) -> rp.EnvironmentView:
    base: dict[str, Any] = {
        "environment_id": uuid.UUID(int=0xE),
        "now": NOW,
        "replicas": 2,
        "current": V1,
        "instances": instances,
    }
    base.update(kw)
    return rp.EnvironmentView(**base)


def rollout(
    *instances: rp.ReplicaView, target: rp.ReleaseView = V2, **kw: Any
) -> rp.EnvironmentView:
    kw.setdefault("rollout_started_at", NOW - 10)
    return view(*instances, target=target, **kw)


def iid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


# --- counts and strategies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "replicas", "up", "down"),
    [
        (0, 4, 0, 0),
        (3, 4, 3, 3),
        ("25%", 4, 1, 1),
        ("25%", 3, 1, 0),
        ("25%", 10, 3, 2),
        ("50%", 5, 3, 2),
        ("100%", 3, 3, 3),
        ("0%", 7, 0, 0),
        ("1%", 1, 1, 0),
        (" 30% ", 10, 3, 3),
        ("25%", 0, 0, 0),
    ],
)
def test_resolve_count(value: int | str, replicas: int, up: int, down: int) -> None:
    assert rp.resolve_count(value, replicas, round_up=True) == up
    assert rp.resolve_count(value, replicas, round_up=False) == down


def test_strategy_from_wire_resolves_percentages_and_keeps_the_rest() -> None:
    wire = RolloutStrategy(
        type="bluegreen",
        max_surge="50%",
        max_unavailable="50%",
        min_healthy_time=2,
        drain_timeout=7,
        progress_deadline=90,
        healthy_deadline=45,
        auto_revert=False,
    )
    assert rp.ResolvedStrategy.from_wire(wire, 3) == rp.ResolvedStrategy(
        type="bluegreen",
        max_surge=2,
        max_unavailable=1,
        min_healthy_time=2.0,
        drain_timeout=7.0,
        progress_deadline=90.0,
        healthy_deadline=45.0,
        auto_revert=False,
    )
    assert rp.ResolvedStrategy.from_wire(RolloutStrategy(), 5) == rp.ResolvedStrategy()


# --- back-off -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        (0, 0.0),
        (1, 1.0),
        (2, 2.0),
        (3, 4.0),
        (4, 8.0),
        (6, 32.0),
        (7, 60.0),
        (8, 60.0),
        (500, 60.0),
    ],
)
def test_backoff_delay_doubles_up_to_a_minute(failures: int, delay: float) -> None:
    assert backoff_delay(failures) == delay


def test_backoff_until_counts_the_last_ten_minutes_from_the_last_failure() -> None:
    assert backoff_until((), NOW) is None
    assert backoff_until((NOW - 0.5,), NOW) == NOW + 0.5
    assert backoff_until((NOW - 1.0,), NOW) is None  # one failure: 1 s, over
    assert backoff_until((NOW - 30, NOW - 20, NOW - 1), NOW) == NOW + 3  # 3 failures: 4 s
    assert backoff_until((NOW - 700, NOW - 650, NOW - 1), NOW) is None  # older ones do not count
    assert backoff_until(tuple(NOW - k for k in range(10)), NOW) == NOW + 60


def test_a_failed_current_instance_is_replaced_after_its_back_off() -> None:
    dead = inst(1, state=S.FAILED, exit_code=1, serving=False, health=H.UNHEALTHY)
    ok = inst(2)
    early = view(dead, ok, recent_failures=(NOW - 0.5,))
    assert rp.plan(early) == [rp.Terminate(iid(1), "failed: exited with code 1")]
    later = dataclasses.replace(early, instances=(ok,))
    assert rp.plan(later) == [rp.Wait("v1: back-off after recent failures", until=NOW + 0.5)]
    assert rp.plan(dataclasses.replace(later, now=NOW + 0.5)) == [rp.Place(V1.id, 1)]


# --- failure causes -------------------------------------------------------------------------

LOGS = tuple(f"log {k}" for k in range(25))


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"oom_killed": True, "exit_code": 137}, "was killed: out of memory"),
        ({"exit_code": 1}, "exited with code 1"),
        ({"exit_code": 0, "state": S.STOPPED}, "exited with code 0"),
        (
            {"exit_code": 3, "reason": "crash loop: 5 restarts"},
            "exited with code 3 (crash loop: 5 restarts)",
        ),
        (
            {"exit_code": 137, "health": H.UNHEALTHY, "last_check": "GET /healthz -> 500"},
            "failed its health check: GET /healthz -> 500",
        ),
        (
            {"health": H.UNHEALTHY, "last_check": "connection refused on :8080"},
            "failed its health check: connection refused on :8080",
        ),
        (
            {"exit_code": 2, "health": H.UNHEALTHY, "last_check": "connection refused on :8080"},
            "exited with code 2",
        ),
        ({"reason": "image not found"}, "failed: image not found"),
        (
            {"exit_code": 1, "reason": "crash loop: exited with code 1; gave up after 5 restarts"},
            "exited with code 1 (crash loop: gave up after 5 restarts)",
        ),
        (
            {
                "oom_killed": True,
                "reason": "crash loop: killed: out of memory (OOM); gave up after 2 restarts",
            },
            "was killed: out of memory (crash loop: gave up after 2 restarts)",
        ),
        ({"exit_code": 1, "reason": "exited with code 1"}, "exited with code 1"),
        (
            {"oom_killed": True, "reason": "killed: out of memory (OOM)"},
            "was killed: out of memory",
        ),
        ({}, "failed"),
        ({"state": S.STOPPED}, "stopped by itself"),
    ],
)
def test_cause_of_an_ended_instance(fields: dict[str, Any], text: str) -> None:
    i = inst(0x1A2B3C4D << 96, V2, state=S.FAILED, health=H.UNKNOWN, serving=False)
    i = dataclasses.replace(i, **fields)
    assert failure_cause(i, 4, healthy_deadline=120) == f"instance 1a2b3c4d of v4 {text}"


def test_cause_of_an_instance_never_healthy_names_its_last_check() -> None:
    i = pending(0x1A2B3C4D << 96, age=120)
    assert failure_cause(i, 4, healthy_deadline=120) == (
        "instance 1a2b3c4d of v4 not healthy 120 s after it was placed "
        "(pending, no health check result yet)"
    )
    i = dataclasses.replace(
        i, state=S.RUNNING, health=H.UNHEALTHY, last_check="connection refused on :8080"
    )
    assert failure_cause(i, 4, healthy_deadline=120.5) == (
        "instance 1a2b3c4d of v4 not healthy 120.5 s after it was placed "
        "(last check: connection refused on :8080)"
    )


def test_the_stop_of_an_ended_instance_says_why() -> None:
    checked = inst(1, state=S.FAILED, health=H.UNHEALTHY, last_check="GET / -> 500", serving=False)
    unknown = inst(2, state=S.FAILED, reason="image not found", serving=False)
    assert rp.plan(view(checked, unknown, replicas=0)) == [
        rp.Terminate(iid(1), "failed its health check: GET / -> 500"),
        rp.Terminate(iid(2), "failed: image not found"),
    ]


def test_cause_of_an_instance_never_healthy_quotes_its_agent_without_a_check() -> None:
    i = dataclasses.replace(
        pending(0x1A2B3C4D << 96, age=120),
        state=S.STARTING,
        reason="not listening on port 8080 yet: connection refused",
    )
    assert failure_cause(i, 4, healthy_deadline=120) == (
        "instance 1a2b3c4d of v4 not healthy 120 s after it was placed "
        "(starting: not listening on port 8080 yet: connection refused)"
    )


def test_cause_quotes_the_last_twenty_log_lines() -> None:
    i = dataclasses.replace(inst(1, V2, state=S.FAILED, exit_code=1), log_tail=LOGS)
    lines = failure_cause(i, 2, healthy_deadline=1).splitlines()
    assert lines[0] == "instance 00000000 of v2 exited with code 1"
    assert lines[1] == "last log lines:"
    assert lines[2:] == [f"log {k}" for k in range(5, 25)]


# --- steady state ---------------------------------------------------------------------------


def test_steady_state_with_nothing_to_do() -> None:
    assert rp.plan(view(inst(1), inst(2))) == [rp.Wait("steady")]


def test_missing_instances_are_placed() -> None:
    assert rp.plan(view(inst(1), replicas=3)) == [rp.Place(V1.id, 2)]
    assert rp.plan(view(replicas=1)) == [rp.Place(V1.id, 1)]


def test_a_healthy_instance_joins_after_min_healthy_time() -> None:
    young = inst(3, serving=False, healthy_since=NOW - 2)
    assert rp.plan(view(inst(1), young, replicas=2)) == [
        rp.Wait("v1: instance 00000000 healthy for 5 s", until=NOW + 3)
    ]
    ready = dataclasses.replace(young, healthy_since=NOW - 5)
    assert rp.plan(view(inst(1), ready, replicas=2)) == [rp.Serve(iid(3))]


def test_an_instance_healthy_without_a_since_waits_for_it() -> None:
    unknown_since = inst(3, serving=False, healthy_since=None)
    (wait,) = rp.plan(view(inst(1), unknown_since))
    assert isinstance(wait, rp.Wait) and wait.until is None
    assert "to become healthy" in wait.reason


def test_a_serving_instance_that_turns_unhealthy_keeps_its_place() -> None:
    """The route table skips it until it is healthy again; the agent restarts it."""
    sick = inst(2, health=H.UNHEALTHY, healthy_since=None)
    assert rp.plan(view(inst(1), sick)) == [rp.Wait("steady")]


def test_a_drain_ends_with_a_stop() -> None:
    draining = inst(3, serving=False, drain_started_at=NOW - 10)
    assert rp.plan(view(inst(1), inst(2), draining)) == [rp.Wait("draining", until=NOW + 20)]
    done = dataclasses.replace(draining, drain_started_at=NOW - 30)
    assert rp.plan(view(inst(1), inst(2), done)) == [rp.Terminate(iid(3), "drained")]


def test_an_instance_wanted_gone_leaves_the_route_and_is_replaced() -> None:
    removed = inst(2, desired_state="terminated")
    assert rp.plan(view(inst(1), removed)) == [rp.Unserve(iid(2), drain=False), rp.Place(V1.id, 1)]
    stopping = dataclasses.replace(removed, serving=False, state=S.STOPPING)
    assert rp.plan(view(inst(1), stopping)) == [rp.Place(V1.id, 1)]


def test_scale_down_takes_the_newest_first_and_drains_them() -> None:
    assert rp.plan(view(inst(1), inst(2), inst(3), replicas=1)) == [
        rp.Unserve(iid(3)),
        rp.Unserve(iid(2)),
    ]
    assert rp.plan(view(inst(1), inst(2), inst(3), replicas=0)) == [
        rp.Unserve(iid(3)),
        rp.Unserve(iid(2)),
        rp.Unserve(iid(1)),
    ]


def test_scale_down_stops_instances_not_serving_before_those_serving() -> None:
    young = inst(1, serving=False, healthy_since=NOW, created_at=NOW - 1000)
    assert rp.plan(view(young, inst(2), inst(3), replicas=2)) == [
        rp.Terminate(iid(1), "scaled down")
    ]


def test_draining_current_instances_rejoin_before_new_ones_are_placed() -> None:
    left_first = inst(2, serving=False, drain_started_at=NOW - 10)
    left_last = inst(3, serving=False, drain_started_at=NOW - 1)
    sick = inst(4, serving=False, drain_started_at=NOW - 1, health=H.UNHEALTHY)
    assert rp.plan(view(inst(1), left_first, left_last, sick, replicas=2)) == [rp.Serve(iid(3))]
    actions = rp.plan(view(inst(1), left_first, left_last, sick, replicas=3))
    assert actions == [rp.Serve(iid(3)), rp.Serve(iid(2))]
    actions = rp.plan(view(inst(1), sick, replicas=2))
    assert actions == [rp.Place(V1.id, 1)]


def test_instances_of_other_releases_leave_once_the_current_one_stands() -> None:
    old = rp.ReleaseView(uuid.UUID(int=0xA0), 0, rp.ResolvedStrategy())
    stale1 = inst(5, old)
    stale2 = inst(6, old)
    warming = inst(1, serving=False, healthy_since=NOW)
    # v1 has one instance in the route out of two: one stale instance may go
    actions = rp.plan(view(inst(2), warming, stale1, stale2, replicas=2))
    assert actions == [rp.Unserve(iid(5))]
    # v1 stands: both go; one not serving stops at once
    idle = dataclasses.replace(stale2, serving=False)
    assert rp.plan(view(inst(1), inst(2), stale1, idle)) == [
        rp.Unserve(iid(5)),
        rp.Terminate(iid(6), "not of the current release"),
    ]


def test_without_a_current_release_everything_leaves() -> None:
    strays = (inst(1, None), inst(2, V2, serving=False))
    assert rp.plan(view(*strays, current=None)) == [
        rp.Unserve(iid(1)),
        rp.Terminate(iid(2), "no current release"),
    ]
    assert rp.plan(view(current=None)) == [rp.Wait("steady")]


def test_node_drain_places_a_replacement_then_unserves_once_it_serves() -> None:
    away = inst(1, node_schedulable=False)
    assert rp.plan(view(away, inst(2))) == [rp.Place(V1.id, 1)]
    replacement = inst(3, serving=False, healthy_since=NOW - 5, created_at=NOW - 10)
    assert rp.plan(view(away, inst(2), replacement)) == [rp.Serve(iid(3)), rp.Unserve(iid(1))]
    idle_away = dataclasses.replace(away, serving=False)
    assert rp.plan(view(idle_away, inst(2), replacement)) == [
        rp.Serve(iid(3)),
        rp.Terminate(iid(1), "its node takes no new work"),
    ]


def test_an_instance_with_no_node_yet_is_not_on_a_draining_node() -> None:
    unplaced = dataclasses.replace(pending(3, V1), node_id=None, node_schedulable=False)
    (wait,) = rp.plan(view(inst(1), unplaced))
    assert isinstance(wait, rp.Wait)


# --- rollouts -------------------------------------------------------------------------------


def test_rolling_first_pass_places_the_surge() -> None:
    assert rp.plan(rollout(inst(1), inst(2))) == [rp.Place(V2.id, 1)]


def test_rolling_serves_a_ready_target_and_unserves_an_old_one() -> None:
    new = inst(3, V2, serving=False, healthy_since=NOW - 5, created_at=NOW - 9)
    assert rp.plan(rollout(inst(1), inst(2), new)) == [
        rp.Serve(iid(3)),
        rp.Unserve(iid(1)),
        rp.Place(V2.id, 1),
    ]


def test_rolling_waits_for_min_healthy_time() -> None:
    new = inst(3, V2, serving=False, healthy_since=NOW - 1, created_at=NOW - 9)
    assert rp.plan(rollout(inst(1), inst(2), new)) == [
        rp.Wait("v2: instance 00000000 healthy for 5 s", until=NOW + 4)
    ]


def test_rolling_unserves_an_unhealthy_old_instance_for_free() -> None:
    sick = inst(1, health=H.UNHEALTHY, healthy_since=None)
    # and the room it frees lets one more surge instance be placed
    assert rp.plan(rollout(sick, inst(2))) == [rp.Unserve(iid(1)), rp.Place(V2.id, 2)]


def test_rolling_with_max_unavailable_unserves_before_replacing() -> None:
    strategy = rp.ResolvedStrategy(max_surge=0, max_unavailable=1)
    target = dataclasses.replace(V2, strategy=strategy)
    assert rp.plan(rollout(inst(1), inst(2), target=target)) == [
        rp.Unserve(iid(1)),
        rp.Place(V2.id, 1),
    ]


def test_rolling_never_places_more_than_replicas_target_instances() -> None:
    strategy = rp.ResolvedStrategy(max_surge=5)
    target = dataclasses.replace(V2, strategy=strategy)
    assert rp.plan(rollout(inst(1), inst(2), target=target)) == [rp.Place(V2.id, 2)]
    assert rp.plan(rollout(inst(1), inst(2), pending(3), pending(4), target=target)) == [
        rp.Wait("v2: healthy deadline", until=NOW + 119)
    ]


def test_old_instances_not_serving_are_stopped_during_a_rollout() -> None:
    warming = pending(3, V1)
    assert rp.plan(rollout(inst(1), inst(2), warming)) == [
        rp.Terminate(iid(3), "replaced by v2"),
        rp.Place(V2.id, 1),
    ]


def test_a_target_instance_on_a_draining_node_is_replaced() -> None:
    stuck = dataclasses.replace(pending(3), node_schedulable=False)
    assert rp.plan(rollout(inst(1), inst(2), stuck)) == [
        rp.Terminate(iid(3), "its node takes no new work"),
        rp.Place(V2.id, 1),
    ]


def test_promote_when_every_replica_of_the_target_serves_and_no_old_one() -> None:
    draining = inst(1, serving=False, drain_started_at=NOW - 1)
    assert rp.plan(rollout(inst(3, V2), inst(4, V2), draining)) == [rp.Promote(V2.id)]
    assert rp.plan(rollout(inst(1), inst(3, V2), inst(4, V2)))[-1] != rp.Promote(V2.id)


def test_promote_wins_over_a_surplus_target_failure() -> None:
    crashed = inst(5, V2, state=S.FAILED, exit_code=1, serving=False)
    assert rp.plan(rollout(inst(3, V2), inst(4, V2), crashed)) == [
        rp.Terminate(iid(5), "failed: exited with code 1"),
        rp.Promote(V2.id),
    ]


def test_zero_replicas_promote_once_nothing_old_serves() -> None:
    assert rp.plan(rollout(inst(1), replicas=0)) == [rp.Unserve(iid(1))]
    assert rp.plan(rollout(replicas=0)) == [rp.Promote(V2.id)]


def test_a_crashed_target_fails_the_release_and_reverts() -> None:
    crashed = inst(3, V2, state=S.FAILED, exit_code=1, serving=False, log_tail=("Traceback",))
    warming = pending(4)
    left = inst(2, serving=False, drain_started_at=NOW - 5)
    actions = rp.plan(rollout(inst(1), left, crashed, warming))
    assert actions == [
        rp.Serve(iid(2)),
        rp.Terminate(iid(3), "failed: exited with code 1"),
        rp.Terminate(iid(4), "release v2 failed"),
        rp.Fail(V2.id, "instance 00000000 of v2 exited with code 1\nlast log lines:\nTraceback"),
    ]


def test_a_failed_release_keeps_its_serving_instances_until_the_current_stands() -> None:
    serving_new = inst(3, V2)
    crashed = inst(4, V2, state=S.FAILED, exit_code=1, serving=False)
    actions = rp.plan(rollout(inst(1), serving_new, crashed))
    assert actions == [
        rp.Terminate(iid(4), "failed: exited with code 1"),
        rp.Fail(V2.id, "instance 00000000 of v2 exited with code 1"),
    ]
    # next pass, v2 is of neither release: v1 is short of one, the v2 instance keeps serving
    after = view(inst(1), serving_new)
    assert rp.plan(after) == [rp.Place(V1.id, 1)]


def test_without_auto_revert_the_pass_only_fails() -> None:
    target = dataclasses.replace(V2, strategy=rp.ResolvedStrategy(auto_revert=False))
    left = inst(2, serving=False, drain_started_at=NOW - 5)
    never = pending(3, target, age=200)
    actions = rp.plan(rollout(inst(1), left, never, target=target))
    assert actions == [
        rp.Fail(
            V2.id,
            "instance 00000000 of v2 not healthy 120 s after it was placed "
            "(pending, no health check result yet)",
        )
    ]


def test_progress_deadline() -> None:
    late = rollout(inst(1), inst(2), inst(3, V2), pending(4, age=5), rollout_started_at=NOW - 300)
    (fail,) = [a for a in rp.plan(late) if isinstance(a, rp.Fail)]
    assert fail.cause == "rollout to v2 did not finish within 300 s: 1 of 2 instances serving"
    on_time = dataclasses.replace(late, rollout_started_at=NOW - 299)
    assert not [a for a in rp.plan(on_time) if isinstance(a, rp.Fail)]


def test_bluegreen_waits_for_every_target_instance() -> None:
    target = dataclasses.replace(
        V2, strategy=rp.ResolvedStrategy(type="bluegreen", min_healthy_time=5)
    )
    assert rp.plan(rollout(inst(1), inst(2), target=target)) == [rp.Place(V2.id, 2)]
    one_ready = inst(3, V2, serving=False, healthy_since=NOW - 5, created_at=NOW - 9)
    (wait,) = rp.plan(rollout(inst(1), inst(2), one_ready, pending(4), target=target))
    assert isinstance(wait, rp.Wait) and wait.until == NOW + 119
    both = dataclasses.replace(one_ready, id=iid(4))
    assert rp.plan(rollout(inst(1), inst(2), one_ready, both, target=target)) == [
        rp.Serve(iid(3)),
        rp.Serve(iid(4)),
        rp.Unserve(iid(1)),
        rp.Unserve(iid(2)),
    ]


def test_immediate_stops_every_old_instance_even_draining_ones() -> None:
    target = dataclasses.replace(V2, strategy=rp.ResolvedStrategy(type="immediate"))
    left = inst(2, serving=False, drain_started_at=NOW - 1)
    assert rp.plan(rollout(inst(1), left, target=target)) == [
        rp.Unserve(iid(1), drain=False),
        rp.Terminate(iid(1), "immediate rollout to v2"),
        rp.Terminate(iid(2), "immediate rollout to v2"),
        rp.Place(V2.id, 2),
    ]


def test_a_rollout_to_the_current_release_is_steady_state() -> None:
    assert rp.plan(rollout(inst(1), inst(2), target=V1)) == [rp.Wait("steady")]


def test_instances_of_a_superseded_rollout_leave_first() -> None:
    v15 = rp.ReleaseView(uuid.UUID(int=0xAF), 15, rp.ResolvedStrategy())
    half = inst(9, v15)
    idle = pending(8, v15)
    ready = inst(3, V2, serving=False, healthy_since=NOW - 5, created_at=NOW - 9)
    assert rp.plan(rollout(inst(1), half, idle, ready, replicas=2)) == [
        rp.Serve(iid(3)),
        rp.Unserve(iid(9)),
        rp.Terminate(iid(8), "replaced by v2"),
        rp.Place(V2.id, 1),
    ]


def test_an_instance_on_a_down_node_leaves_at_once_and_is_replaced() -> None:
    lost = inst(1, node_down=True, node_schedulable=False)
    assert rp.plan(view(lost, inst(2))) == [rp.Unserve(iid(1)), rp.Place(V1.id, 1)]
    idle = dataclasses.replace(lost, serving=False)
    assert rp.plan(view(idle, inst(2))) == [
        rp.Terminate(iid(1), "its node takes no new work"),
        rp.Place(V1.id, 1),
    ]


def test_a_target_instance_on_a_down_node_is_stopped_even_serving() -> None:
    lost = inst(3, V2, node_down=True, node_schedulable=False)
    assert rp.plan(rollout(inst(1), inst(2), lost)) == [
        rp.Unserve(iid(3), drain=False),
        rp.Terminate(iid(3), "its node is down"),
        rp.Place(V2.id, 1),
    ]


def test_rolling_takes_old_instances_on_draining_nodes_out_first() -> None:
    away = inst(2, node_schedulable=False)
    ready = inst(3, V2, serving=False, healthy_since=NOW - 5, created_at=NOW - 9)
    assert rp.plan(rollout(inst(1), away, ready)) == [
        rp.Serve(iid(3)),
        rp.Unserve(iid(2)),
        rp.Place(V2.id, 1),
    ]


def test_a_rejoined_instance_counts_for_the_current_release_standing() -> None:
    old = rp.ReleaseView(uuid.UUID(int=0xA0), 0, rp.ResolvedStrategy())
    left = inst(2, serving=False, drain_started_at=NOW - 1)
    assert rp.plan(view(inst(1), left, inst(5, old))) == [rp.Serve(iid(2)), rp.Unserve(iid(5))]
