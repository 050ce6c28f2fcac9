from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeitwork.proxy.health import ActiveHealth, EjectionPolicy, OutlierDetector


def test_fall_threshold_takes_backend_out() -> None:
    h = ActiveHealth(rise=2, fall=2)
    assert h.healthy
    assert h.record(False) is False
    assert h.healthy
    assert h.record(False) is True
    assert not h.healthy


def test_rise_threshold_brings_it_back() -> None:
    h = ActiveHealth(rise=3, fall=1, healthy=False)
    assert not h.record(True)
    assert not h.record(True)
    assert h.record(True)
    assert h.healthy


def test_a_failure_resets_the_rise_streak() -> None:
    h = ActiveHealth(rise=2, fall=1, healthy=False)
    h.record(True)
    h.record(False)
    h.record(True)
    assert not h.healthy
    h.record(True)
    assert h.healthy


def test_thresholds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ActiveHealth(rise=0)


@given(
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
    results=st.lists(st.booleans(), max_size=60),
)
def test_state_matches_a_reference_model(rise: int, fall: int, results: list[bool]) -> None:
    h = ActiveHealth(rise=rise, fall=fall)
    healthy = True
    streak_ok = streak_bad = 0
    for ok in results:
        if ok:
            streak_ok, streak_bad = streak_ok + 1, 0
            if not healthy and streak_ok >= rise:
                healthy, streak_ok = True, 0
        else:
            streak_bad, streak_ok = streak_bad + 1, 0
            if healthy and streak_bad >= fall:
                healthy, streak_bad = False, 0
        changed = h.record(ok)
        assert h.healthy is healthy
        assert isinstance(changed, bool)


def test_consecutive_failures_eject_with_doubling_back_off() -> None:
    d = OutlierDetector(EjectionPolicy(consecutive_failures=3, base_seconds=2, max_seconds=5))
    now = 100.0
    assert not d.record_failure(now)
    assert not d.record_failure(now)
    assert d.record_failure(now)
    assert d.is_ejected(now + 1.9)
    assert not d.is_ejected(now + 2.0)
    now += 2.0
    for _ in range(2):
        d.record_failure(now)
    assert d.record_failure(now)
    assert d.ejected_until == now + 4.0
    now += 4.0
    for _ in range(3):
        d.record_failure(now)
    assert d.ejected_until == now + 5.0  # capped


def test_success_breaks_the_failure_streak() -> None:
    d = OutlierDetector(EjectionPolicy(consecutive_failures=2))
    d.record_failure(1.0)
    d.record_success()
    assert not d.record_failure(1.0)
    assert d.record_failure(1.0)


def test_failures_during_ejection_do_not_extend_it() -> None:
    d = OutlierDetector(EjectionPolicy(consecutive_failures=1, base_seconds=10))
    assert d.record_failure(0.0)
    assert not d.record_failure(5.0)
    assert d.ejected_until == 10.0


def test_back_off_resets_after_a_run_of_successes() -> None:
    d = OutlierDetector(EjectionPolicy(consecutive_failures=1, base_seconds=1), reset_after=3)
    d.record_failure(0.0)
    d.record_failure(1.0)
    assert d.ejections == 2
    for _ in range(3):
        d.record_success()
    assert d.ejections == 0
    assert d.record_failure(10.0)
    assert d.ejected_until == 11.0
