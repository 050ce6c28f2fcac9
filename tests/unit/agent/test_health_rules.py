"""The health thresholds, exhaustively: readiness after ``healthy_threshold`` passes,
unhealthy after ``unhealthy_threshold`` failures, restart only after the instance had been
healthy, the grace period counting nothing until the first pass, ``none`` healthy at once."""

from __future__ import annotations

import itertools

import pytest

from zeitwork.agent import health_rules as r
from zeitwork.core.states import HealthState
from zeitwork.wire.health import HealthCheck, HealthResult

H = HealthState
OK = HealthResult(ok=True, detail="GET / -> 200", status_code=200)
BAD = HealthResult(ok=False, detail="GET /x -> 500", status_code=500)


def run(check: HealthCheck, results: str, *, grace: str = "") -> list[r.Verdict]:
    """Feed a sequence of results ('+' pass, '-' fail); ``grace`` marks which are in the
    grace period ('g') by position."""
    tracker = r.initial(check)
    verdicts = []
    for index, mark in enumerate(results):
        in_grace = index < len(grace) and grace[index] == "g"
        verdict = r.observe(tracker, OK if mark == "+" else BAD, check=check, grace=in_grace)
        tracker = verdict.tracker
        verdicts.append(verdict)
    return verdicts


def states(verdicts: list[r.Verdict]) -> str:
    letters = {H.UNKNOWN: "?", H.HEALTHY: "H", H.UNHEALTHY: "U"}
    return "".join(letters[v.tracker.state] for v in verdicts)


def test_effective_check_defaults_to_tcp_on_the_app_port() -> None:
    check, port = r.effective_check(None, 8080)
    assert (check.type, port) == ("tcp", 8080)
    check, port = r.effective_check(HealthCheck(type="http", path="/h", port=9000), 8080)
    assert (check.type, check.path, port) == ("http", "/h", 9000)
    check, port = r.effective_check(HealthCheck(type="http"), 3000)
    assert port == 3000


@pytest.mark.parametrize(
    ("healthy", "unhealthy", "results", "expected"),
    [
        (1, 3, "+", "H"),
        (1, 3, "+--", "HHH"),
        (1, 3, "+---", "HHHU"),
        (1, 3, "+--+---", "HHHHHHU"),
        (1, 1, "+-", "HU"),
        (2, 3, "+", "?"),
        (2, 3, "++", "?H"),
        (2, 3, "+-++", "???H"),
        (3, 2, "---", "?UU"),
        (1, 2, "+--+", "HHUH"),
        (2, 2, "+--+", "??UU"),
        (2, 2, "+--++", "??UUH"),
    ],
)
def test_thresholds(healthy: int, unhealthy: int, results: str, expected: str) -> None:
    check = HealthCheck(type="http", healthy_threshold=healthy, unhealthy_threshold=unhealthy)
    assert states(run(check, results)) == expected


def test_restart_only_after_it_had_been_healthy() -> None:
    check = HealthCheck(type="tcp", unhealthy_threshold=3)
    never = run(check, "------")
    assert not any(v.restart for v in never)
    assert never[2].tracker.state == H.UNHEALTHY and never[2].changed
    broke = run(check, "+---")
    assert [v.restart for v in broke] == [False, False, False, True]
    assert broke[-1].reason == "health check failed 3 times: GET /x -> 500"
    assert broke[-1].changed


def test_failures_in_the_grace_period_do_not_count_until_the_first_pass() -> None:
    check = HealthCheck(type="http", unhealthy_threshold=2, grace_period=30)
    starting = run(check, "-----", grace="ggggg")
    assert states(starting) == "?????"
    assert all(v.tracker.consecutive_failures == 0 and not v.restart for v in starting)
    assert starting[-1].tracker.last == BAD  # the result is still reported
    # after the grace period the same failures count
    assert states(run(check, "---", grace="g")) == "??U"
    # once it passed, failures count even within the grace period
    served = run(check, "+--", grace="ggg")
    assert states(served) == "HHU" and served[-1].restart


def test_changed_is_set_exactly_when_the_state_moves() -> None:
    check = HealthCheck(type="http", healthy_threshold=1, unhealthy_threshold=2)
    for sequence in ("".join(p) for p in itertools.product("+-", repeat=6)):
        verdicts = run(check, sequence)
        previous = H.UNKNOWN
        for verdict in verdicts:
            assert verdict.changed == (verdict.tracker.state != previous), sequence
            previous = verdict.tracker.state


def test_every_sequence_respects_the_thresholds() -> None:
    """For all short sequences: healthy iff the last ``healthy_threshold`` passed (or it was
    healthy and fewer than ``unhealthy_threshold`` failures followed); restart iff unhealthy
    after having been healthy."""
    for healthy, unhealthy in itertools.product((1, 2, 3), (1, 2, 3)):
        check = HealthCheck(
            type="tcp", healthy_threshold=healthy, unhealthy_threshold=unhealthy, grace_period=0
        )
        for sequence in ("".join(p) for p in itertools.product("+-", repeat=7)):
            verdicts = run(check, sequence)
            tracker = verdicts[-1].tracker
            tail_pass = len(sequence) - len(sequence.rstrip("+"))
            tail_fail = len(sequence) - len(sequence.rstrip("-"))
            assert tracker.consecutive_successes == tail_pass
            assert tracker.consecutive_failures == tail_fail
            if tail_pass >= healthy:
                assert tracker.state == H.HEALTHY, (healthy, unhealthy, sequence)
            if tail_fail >= unhealthy:
                assert tracker.state == H.UNHEALTHY, (healthy, unhealthy, sequence)
                was_healthy = any(v.tracker.state == H.HEALTHY for v in verdicts)
                assert verdicts[-1].restart == was_healthy
            if 0 < tail_fail < unhealthy and tracker.state == H.HEALTHY:
                assert not verdicts[-1].restart


def test_none_is_healthy_at_once_and_stays_so() -> None:
    check = HealthCheck(type="none")
    assert r.initial(check).state == H.HEALTHY
    verdicts = run(check, "-+-")
    assert states(verdicts) == "HHH"
    assert not any(v.changed or v.restart for v in verdicts)


def test_report_carries_counts_and_last_result() -> None:
    check = HealthCheck(type="http", unhealthy_threshold=5)
    tracker = run(check, "+--")[-1].tracker
    report = tracker.report()
    assert report.state == H.HEALTHY
    assert report.consecutive_failures == 2 and report.consecutive_successes == 0
    assert report.last == BAD


@pytest.mark.parametrize(
    ("started", "now", "expected"), [(0.0, 29.9, True), (0.0, 30.0, False), (10.0, 20.0, True)]
)
def test_in_grace(started: float, now: float, expected: bool) -> None:
    assert r.in_grace(HealthCheck(grace_period=30), started_at=started, now=now) is expected


def test_texts() -> None:
    assert r.failure_reason(1, "connection refused on :8080") == (
        "health check failed once: connection refused on :8080"
    )
    assert r.failure_reason(2, "") == "health check failed 2 times"
    assert r.http_detail("/healthz", 500) == "GET /healthz -> 500"
    assert r.seconds(2.0) == "2" and r.seconds(0.5) == "0.5"
