"""How the app verbs read their arguments and show releases, status, env, events and logs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.unit.cli.wire_factories import NODE_B, T0, event, instance, release, rollout, status
from zeitwork.cli import release_view as view
from zeitwork.core.errors import InvalidInput
from zeitwork.core.states import HealthState, InstanceState, ReleaseState
from zeitwork.wire.admin import LogLine, LogNotice
from zeitwork.wire.health import HealthResult
from zeitwork.wire.releases import EnvOut


@pytest.mark.parametrize(("text", "number"), [("v3", 3), ("3", 3), (" V12 ", 12)])
def test_parse_version(text: str, number: int) -> None:
    assert view.parse_version(text) == number


@pytest.mark.parametrize("text", ["", "v", "v0", "three", "-1", "v1.2"])
def test_parse_version_refuses(text: str) -> None:
    with pytest.raises(InvalidInput, match="not a release version"):
        view.parse_version(text)


def test_parse_assignments_keeps_equals_in_values_and_the_last_wins() -> None:
    assert view.parse_assignments(["A=1", "B=x=y", "A=2", "EMPTY="]) == {
        "A": "2",
        "B": "x=y",
        "EMPTY": "",
    }
    for bad in ("NOEQUALS", "=value"):
        with pytest.raises(InvalidInput, match="expected NAME=VALUE"):
            view.parse_assignments([bad])


@pytest.mark.parametrize(
    ("text", "before"),
    [("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1.5m", 90)],
)
def test_parse_since_durations(text: str, before: int) -> None:
    assert view.parse_since(text, T0) == T0 - timedelta(seconds=before)


def test_parse_since_times() -> None:
    assert view.parse_since("2026-12-07T02:00:00", T0) == datetime(2026, 12, 7, 2, tzinfo=UTC)
    assert view.parse_since("2026-12-07T03:00:00+01:00", T0) == datetime(2026, 12, 7, 2, tzinfo=UTC)
    with pytest.raises(InvalidInput, match="give a duration"):
        view.parse_since("yesterday", T0)
    assert view.rfc3339(T0) == "2026-12-07T03:00:00.000000Z"


def test_release_rows_show_state_source_and_cause() -> None:
    rows = view.release_rows(
        [
            release(3, ReleaseState.ACTIVE, current=True, reason="rollback", source=1),
            release(2, ReleaseState.FAILED, error="instance 1a2b of v2 exited with code 1\nlog"),
            release(1, ReleaseState.SUPERSEDED, image_ref="registry.test/web:v1"),
        ]
    )
    assert rows[0][:5] == ("v3", "sha256:030303030303", "active (current)", "2", "rollback of v1")
    assert rows[0][6] == "-"
    assert rows[1][2] == "failed"
    assert rows[1][6] == "instance 1a2b of v2 exited with code 1"
    assert rows[2][1] == "registry.test/web:v1"
    assert rows[2][5] == "2026-12-07 03:00:00"


def test_a_long_cause_is_cut() -> None:
    (row,) = view.release_rows([release(2, ReleaseState.FAILED, error="x" * 300)])
    assert len(row[6]) == 100 and row[6].endswith("...")


def test_check_text() -> None:
    now = datetime.fromtimestamp(1000, tz=UTC)
    assert view.check_text(None, now) == "-"
    assert view.check_text(HealthResult(ok=True, latency_ms=2.6, checked_at=997), now) == (
        "ok 3 ms, 3 s ago"
    )
    failed = HealthResult(ok=False, detail="GET /healthz -> 500", checked_at=999.6)
    assert view.check_text(failed, now) == "GET /healthz -> 500, 0 s ago"
    assert view.check_text(HealthResult(ok=False), now) == "failed"


def test_instance_rows_newest_release_first_then_by_node() -> None:
    rows = view.instance_rows(
        [
            instance(1, 1, health=HealthState.HEALTHY, serving=True, draining=True),
            instance(2, 2, health=HealthState.HEALTHY, serving=True, node=NODE_B),
            instance(3, 2, InstanceState.FAILED, exit_code=137),
        ],
        T0,
    )
    assert [(r[2], r[3], r[4]) for r in rows] == [
        ("v2", "failed, exit 137", "unknown"),
        ("v2", "running, serving", "healthy"),
        ("v1", "running, draining", "healthy"),
    ]
    assert rows[1][1] == "bbbbbbbb"
    assert rows[1][6] == "10.0.0.2:8080"


def test_status_header_names_release_rollout_instances_domains_and_figures() -> None:
    lines = view.status_header(
        status(
            [instance(1, 3, health=HealthState.HEALTHY, serving=True), instance(2, 4)],
            release(3, ReleaseState.ACTIVE, current=True),
            running=rollout(4),
            domains=("web.example.com",),
            metrics={"rps": 12.5, "error_rate": 0.0, "p99_ms": 31},
        )
    )
    assert lines == [
        "app web (production): 2 replica(s) desired",
        "  current release v3: sha256:030303030303, active since 2026-12-07 03:00:00 (deploy)",
        f"  rollout {str(rollout(4).id)[:8]} (rolling): running",
        "  instances: 2 (1 healthy, 1 serving)",
        "  domain web.example.com: http://web.example.com/",
        "  requests (last minute): error_rate 0, p99_ms 31, rps 12.5",
    ]


def test_status_header_of_an_app_never_deployed() -> None:
    lines = view.status_header(status([], None))
    assert lines[1] == "  no current release: zeitwork deploy --app web --image ..."


def test_app_row() -> None:
    assert view.app_row("web", None) == ("web", "-", "-", "-", "-")
    row = view.app_row(
        "web",
        status(
            [instance(1, 3, serving=True)],
            release(3, ReleaseState.ACTIVE, current=True),
            running=rollout(4),
            domains=("a.test", "b.test"),
        ),
    )
    assert row == ("web", "v3", "active, rolling out", "1/2 serving", "a.test, b.test")


def test_env_rows_never_show_a_secret() -> None:
    env = EnvOut(environment="production", env={"B": "2", "A": "1"}, secret_names=["KEY"])
    assert view.env_rows(env) == [("A", "1"), ("B", "2"), ("KEY", "(secret)")]


def test_event_line_marks_warnings_and_errors_and_names_the_subject() -> None:
    assert view.event_line(event(1, "instance.placed", "placed on a")) == (
        "2026-12-07 03:00:00 instance.placed: placed on a"
    )
    assert view.event_line(event(2, "rollout.failed", "v4 failed", level="error")) == (
        "2026-12-07 03:00:00 rollout.failed ERROR: v4 failed"
    )
    exited = event(3, "instance.exited", "exited with code 1", instance_n=4, node=NODE_B)
    assert view.event_line(exited) == (
        "2026-12-07 03:00:00 instance.exited instance 00000004: exited with code 1"
    )
    assert view.event_line(event(4, "node.down", "no heartbeat", node=NODE_B)) == (
        "2026-12-07 03:00:00 node.down node bbbbbbbb: no heartbeat"
    )


def test_log_text() -> None:
    line = LogLine(
        ts=T0 + timedelta(milliseconds=5),
        instance_id=instance(1, 3).id,
        release="v3",
        stream="stderr",
        line="boom",
    )
    assert view.log_text(line) == ("2026-12-07T03:00:00.005Z v3 00000001 stderr: boom", False)
    plain = LogLine(ts=T0, line="hi")
    assert view.log_text(plain) == ("2026-12-07T03:00:00.000Z - -: hi", False)
    assert view.log_text(LogNotice(notice="node a: unreachable, retrying")) == (
        "node a: unreachable, retrying",
        True,
    )
