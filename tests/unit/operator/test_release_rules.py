"""Pure rules of the release work: which events an instance's change is, how much room a
rollout's first step needs, the port an image exposes, a stored strategy for the planner."""

from __future__ import annotations

import uuid

import pytest

from zeitwork.core.states import HealthState, InstanceState
from zeitwork.operator.db.instance_events import InstanceFacts, describe
from zeitwork.operator.reconcile import rollout_plan as rp
from zeitwork.operator.reconcile.releases import step_summary, strategy_of
from zeitwork.operator.services.releases import exposed_port, surge_needed
from zeitwork.wire.releases import RolloutStrategy


def seen(state: str, health: str = "unknown", **extra: object) -> InstanceFacts:
    return InstanceFacts(InstanceState(state), HealthState(health), **extra)  # type: ignore[arg-type]


def kinds(before: InstanceFacts, after: InstanceFacts) -> list[str]:
    return [n.kind for n in describe(before, after)]


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (seen("pending", "unknown"), seen("starting", "unknown"), ["instance.starting"]),
        (seen("starting", "unknown"), seen("running", "unknown"), ["instance.started"]),
        (
            seen("starting", "unknown"),
            seen("running", "healthy"),
            ["instance.started", "instance.healthy"],
        ),
        (seen("running", "healthy"), seen("running", "unhealthy"), ["instance.unhealthy"]),
        (seen("running", "healthy"), seen("running", "healthy"), []),
        (seen("running", "healthy"), seen("failed", "unknown", exit_code=3), ["instance.exited"]),
        (
            seen("running", "healthy"),
            seen("failed", "unknown", exit_code=137, oom_killed=True),
            ["instance.oom_killed"],
        ),
        (seen("starting", "unknown"), seen("failed", "unknown"), ["instance.failed"]),
        (seen("running", "healthy"), seen("stopped", "unknown", exit_code=0), ["instance.stopped"]),
        (seen("stopping", "unknown"), seen("terminated", "unknown"), ["instance.stopped"]),
        (seen("running", "healthy"), seen("starting", "unknown"), ["instance.starting"]),
    ],
)
def test_instance_changes_and_their_events(
    before: InstanceFacts, after: InstanceFacts, expected: list[str]
) -> None:
    assert kinds(before, after) == expected


def test_events_carry_the_cause() -> None:
    (unhealthy,) = describe(
        seen("running", "healthy"),
        seen("running", "unhealthy", health_detail={"ok": False, "detail": "GET / -> 500"}),
    )
    assert unhealthy.message == "health check fails: GET / -> 500" and unhealthy.level == "warning"
    (exited,) = describe(seen("running", "healthy"), seen("failed", "unknown", exit_code=2))
    assert exited.message == "exited with code 2" and exited.data["exit_code"] == 2
    (restart,) = describe(seen("failed", "unknown"), seen("starting", "unknown"))
    assert restart.message == "instance restarts" and restart.level == "warning"


@pytest.mark.parametrize(
    ("strategy", "replicas", "first", "expected"),
    [
        (RolloutStrategy(), 3, False, (1, 0)),
        (RolloutStrategy(), 3, True, (3, 0)),
        (RolloutStrategy(max_surge="50%"), 3, False, (2, 0)),
        (RolloutStrategy(max_surge=10), 3, False, (3, 0)),
        (RolloutStrategy(max_surge=0, max_unavailable=1), 3, False, (1, 1)),
        (RolloutStrategy(type="bluegreen"), 4, False, (4, 0)),
        (RolloutStrategy(type="immediate"), 4, False, (0, 4)),
        (RolloutStrategy(), 0, False, (0, 0)),
    ],
)
def test_room_the_first_step_needs(
    strategy: RolloutStrategy, replicas: int, first: bool, expected: tuple[int, int]
) -> None:
    assert surge_needed(strategy, replicas, first=first) == expected


@pytest.mark.parametrize(
    ("config", "port"),
    [
        ({}, None),
        ({"ExposedPorts": {"8000/tcp": {}}}, 8000),
        ({"config": {"ExposedPorts": {"53/udp": {}, "9090/tcp": {}}}}, 9090),
        ({"ExposedPorts": {"abc": {}, "70000/tcp": {}}}, None),
        ({"ExposedPorts": ["8080/tcp"]}, None),
    ],
)
def test_the_port_an_image_exposes(config: dict[str, object], port: int | None) -> None:
    assert exposed_port(config) == port


def test_a_stored_strategy_resolves_its_percentages_against_the_replicas() -> None:
    stored = RolloutStrategy(max_surge="25%", max_unavailable="50%").model_dump(mode="json")
    resolved = strategy_of(stored, 5)
    assert (resolved.max_surge, resolved.max_unavailable) == (2, 2)
    assert resolved.min_healthy_time == 5.0 and resolved.auto_revert


def test_a_pass_is_summed_up_by_kind_of_action() -> None:
    ids = [uuid.uuid4() for _ in range(3)]
    actions: list[rp.Action] = [
        rp.Place(ids[0], 2),
        rp.Serve(ids[1]),
        rp.Unserve(ids[2]),
        rp.Wait("min_healthy_time", 10.0),
    ]
    assert step_summary(actions) == {"place": 2, "serve": 1, "unserve": 1}
    assert step_summary([rp.Wait("nothing")]) == {}
