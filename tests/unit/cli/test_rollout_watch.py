"""What deploy prints while a release rolls out: one line per instance phase reached, from
events or status snapshots, never twice nor backwards; the outcome from the release."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.unit.cli.wire_factories import NODE_B, T0, event, instance, release, rid, status
from zeitwork.cli.rollout_watch import RolloutWatch, WatchOutcome, concerns, outcome_of, phase_of
from zeitwork.core.states import HealthState, InstanceState, ReleaseState, RolloutState
from zeitwork.wire.health import HealthResult

H = HealthState
S = InstanceState


def _texts(lines: list[str]) -> list[str]:
    return [line.split("s  ", 1)[1] for line in lines]


@pytest.mark.parametrize(
    ("brief", "phase"),
    [
        (instance(1, 2, S.PENDING), "placed"),
        (instance(1, 2, S.STARTING), "starting"),
        (instance(1, 2, S.RUNNING), "starting"),
        (instance(1, 2, S.RUNNING, health=H.HEALTHY), "healthy"),
        (instance(1, 2, S.RUNNING, health=H.HEALTHY, serving=True), "serving"),
        (instance(1, 2, S.RUNNING, health=H.HEALTHY, serving=True, draining=True), "draining"),
        (instance(1, 2, S.STOPPING), "stopping"),
        (instance(1, 2, S.STOPPED), "stopped"),
        (instance(1, 2, S.TERMINATED), "stopped"),
    ],
)
def test_phase_of_a_status_instance(brief: object, phase: str) -> None:
    assert phase_of(brief) == (phase, "")  # type: ignore[arg-type]


def test_failure_phases_carry_their_detail() -> None:
    check = HealthResult(ok=False, detail="GET /healthz -> 500")
    assert phase_of(instance(1, 2, health=H.UNHEALTHY, check=check)) == (
        "unhealthy",
        "GET /healthz -> 500",
    )
    failed = instance(1, 2, S.FAILED, exit_code=3, reason="crash loop")
    assert phase_of(failed) == ("failed", "exit code 3; crash loop")
    assert phase_of(instance(1, 2, S.FAILED)) == ("failed", "")


def test_a_rolling_update_from_status_snapshots() -> None:
    watch = RolloutWatch()
    old = instance(1, 1, health=H.HEALTHY, serving=True)
    snapshots = [
        [old, instance(2, 2, S.PENDING, node=NODE_B)],
        [old, instance(2, 2, S.PENDING, node=NODE_B)],  # nothing new: nothing printed
        [old, instance(2, 2, health=H.HEALTHY, serving=True, node=NODE_B)],  # skipped a phase
        [instance(1, 1, health=H.HEALTHY, serving=True, draining=True)],  # the new one vanished?
        [instance(1, 1, S.STOPPED)],
        [],
    ]
    lines = [line for i, s in enumerate(snapshots) for line in watch.on_status(status(s), i)]
    assert _texts(lines) == [
        f"instance {str(rid(1))[:8]} (v1) serving",
        f"instance {str(rid(2))[:8]} (v2) placed on node bbbbbbbb",
        f"instance {str(rid(2))[:8]} (v2) serving",
        f"instance {str(rid(1))[:8]} (v1) draining",
        f"instance {str(rid(2))[:8]} (v2) stopped",
        f"instance {str(rid(1))[:8]} (v1) stopped",
    ]
    assert lines[2].startswith("   2.0s  ")


def test_events_and_snapshots_never_print_a_phase_twice_or_backwards() -> None:
    watch = RolloutWatch()
    out = watch.on_event(event(1, "instance.placed", "placed", instance_n=7, version=3), 0.1)
    out += watch.on_event(event(1, "instance.placed", "placed", instance_n=7, version=3), 0.2)
    out += watch.on_status(status([instance(7, 3, health=H.HEALTHY, serving=True)]), 0.5)
    out += watch.on_event(event(2, "instance.healthy", "healthy", instance_n=7), 0.6)  # late
    out += watch.on_event(event(3, "rollout.step", "v3: 1 of 1 new instances serving"), 0.7)
    assert _texts(out) == [
        f"instance {str(rid(7))[:8]} (v3) placed",
        f"instance {str(rid(7))[:8]} (v3) serving",
        "v3: 1 of 1 new instances serving",
    ]


def test_failures_print_each_new_detail_and_a_restart_after_them() -> None:
    watch = RolloutWatch()
    name = f"instance {str(rid(4))[:8]} (v4)"
    steps = [
        event(1, "instance.started", "started", instance_n=4, version=4),
        event(2, "instance.unhealthy", "GET /healthz -> 500", instance_n=4),
        event(3, "instance.unhealthy", "GET /healthz -> 500", instance_n=4),
        event(4, "instance.unhealthy", "connection refused on :8080", instance_n=4),
        event(5, "instance.exited", "exited with code 1", instance_n=4),
        event(6, "instance.placed", "placed again?", instance_n=4),
        event(7, "instance.started", "restarted", instance_n=4),
    ]
    lines = [line for i, e in enumerate(steps) for line in watch.on_event(e, i)]
    assert _texts(lines) == [
        f"{name} starting",
        f"{name} unhealthy: GET /healthz -> 500",
        f"{name} unhealthy: connection refused on :8080",
        f"{name} exited: exited with code 1",
        f"{name} starting",
    ]


def test_an_event_without_instance_prints_its_message() -> None:
    watch = RolloutWatch()
    lines = watch.on_event(event(1, "rollout.failed", "v4 failed: GET / -> 500"), 2.25)
    assert lines == ["   2.2s  v4 failed: GET / -> 500"]


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (release(3, ReleaseState.DEPLOYING), None),
        (release(3, ReleaseState.PENDING, with_rollout=None), None),
        (
            release(3, ReleaseState.ACTIVE, current=True),
            WatchOutcome(True, "v3 is the current release"),
        ),
        (
            release(3, ReleaseState.DEPLOYING, with_rollout=RolloutState.SUCCEEDED),
            WatchOutcome(True, "v3 is the current release"),
        ),
        (
            release(3, ReleaseState.FAILED, error="instance 1a2b of v3 exited with code 1"),
            WatchOutcome(False, "v3 failed: instance 1a2b of v3 exited with code 1"),
        ),
        (
            release(3, ReleaseState.FAILED, with_rollout=None),
            WatchOutcome(False, "v3 failed: no cause recorded"),
        ),
        (
            release(3, ReleaseState.SUPERSEDED),
            WatchOutcome(False, "v3 was superseded by a newer release"),
        ),
        (
            release(3, ReleaseState.DEPLOYING, with_rollout=RolloutState.SUPERSEDED),
            WatchOutcome(False, "v3 was superseded by a newer release"),
        ),
    ],
)
def test_outcome_of(made: object, expected: WatchOutcome | None) -> None:
    assert outcome_of(made) == expected  # type: ignore[arg-type]


def test_a_snapshot_older_than_an_event_does_not_stop_the_instance() -> None:
    watch = RolloutWatch()
    placed = watch.on_event(event(1, "instance.placed", "placed", instance_n=9, version=5), 0.1)
    assert len(placed) == 1
    assert watch.on_status(status([]), 0.2) == []  # asked for before the placement committed
    later = watch.on_status(status([instance(9, 5, S.STARTING)]), 0.3)
    assert _texts(later) == [f"instance {str(rid(9))[:8]} (v5) starting"]
    assert _texts(watch.on_status(status([]), 0.4)) == [f"instance {str(rid(9))[:8]} (v5) stopped"]


def test_concerns_the_release_its_rollout_and_the_release_it_replaces() -> None:
    v3 = release(3)  # its rollout replaces v2
    earlier = T0 - timedelta(seconds=1)
    assert concerns(event(1, "rollout.step", "s", rollout_v=3), v3)
    assert concerns(event(2, "instance.healthy", "h", instance_n=1, release_v=3), v3)
    assert concerns(event(3, "instance.stopped", "s", instance_n=1, release_v=2), v3)
    assert not concerns(event(4, "instance.healthy", "h", instance_n=1, release_v=1), v3)
    assert not concerns(event(5, "node.down", "n"), v3)
    assert not concerns(event(6, "instance.healthy", "h", release_v=3, at=earlier), v3)
    assert not concerns(
        event(7, "instance.stopped", "s", release_v=2), release(3, with_rollout=None)
    )


def test_an_instance_event_takes_its_version_from_the_release_it_carries() -> None:
    watch = RolloutWatch(release_versions={rid(103): 3})
    watch.on_status(status([instance(1, 2, health=H.HEALTHY, serving=True)]), 0)
    lines = watch.on_event(event(1, "instance.placed", "p", instance_n=5, release_v=3), 0.5)
    lines += watch.on_event(event(2, "instance.draining", "d", instance_n=6, release_v=2), 0.6)
    assert _texts(lines) == [
        f"instance {str(rid(5))[:8]} (v3) placed",
        f"instance {str(rid(6))[:8]} (v2) draining",
    ]


def test_one_check_result_told_twice_prints_once_and_a_stopping_instance_fails_quietly() -> None:
    watch = RolloutWatch()
    check = HealthResult(ok=False, detail="GET /healthz -> 404")
    unhealthy = instance(3, 3, health=H.UNHEALTHY, check=check)
    name = f"instance {str(rid(3))[:8]} (v3)"
    lines = watch.on_event(
        event(1, "instance.unhealthy", "health check fails: GET /healthz -> 404", instance_n=3),
        1,
    )
    lines += watch.on_status(status([unhealthy]), 2)
    lines += watch.on_status(status([instance(3, 3, S.STOPPING)]), 3)
    lines += watch.on_status(status([unhealthy]), 4)  # a snapshot asked for earlier
    lines += watch.on_event(event(2, "instance.exited", "exited with code 137", instance_n=3), 5)
    assert _texts(lines) == [
        f"instance {str(rid(3))[:8]} unhealthy: health check fails: GET /healthz -> 404",
        f"{name} stopping",
    ]
