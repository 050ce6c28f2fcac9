from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeitwork.edge.rate_limit import Quota, RateLimiter


def test_burst_then_steady_rate() -> None:
    q = Quota(rps=10, burst=5)
    rl = RateLimiter(capacity=100)
    assert [rl.allow("a", 0.0, q) for _ in range(6)] == [True] * 5 + [False]
    # 0.1 s later exactly one more request fits
    assert rl.allow("a", 0.1, q)
    assert not rl.allow("a", 0.1, q)


def test_one_client_never_slows_another() -> None:
    q = Quota(rps=1, burst=2)
    rl = RateLimiter(capacity=100)
    for _ in range(50):
        rl.allow("abuser", 0.0, q)
    assert rl.allow("victim", 0.0, q)
    assert rl.allow("victim", 0.0, q)


def test_decision_details() -> None:
    q = Quota(rps=2, burst=4)
    rl = RateLimiter()
    first = rl.decide("k", 10.0, q)
    assert first.allowed and first.remaining == 3
    for _ in range(3):
        rl.decide("k", 10.0, q)
    denied = rl.decide("k", 10.0, q)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(0.5)
    assert rl.limited == 1
    assert rl.allow("k", 10.5, q)


def test_quota_validation_and_policy_header() -> None:
    with pytest.raises(ValueError):
        Quota(rps=0, burst=1)
    with pytest.raises(ValueError):
        Quota(rps=1, burst=0)
    with pytest.raises(ValueError):
        Quota(rps=math.inf, burst=1)
    assert Quota(rps=100, burst=200).policy_header == '"default";q=200;w=2'
    with pytest.raises(ValueError):
        RateLimiter(capacity=0)


def test_expired_entries_are_swept_and_forgetting_changes_nothing() -> None:
    q = Quota(rps=10, burst=3)
    rl = RateLimiter(capacity=10)
    for i in range(10):
        rl.allow(f"old{i}", 0.0, q)
    assert len(rl) == 10
    # much later, new clients arrive: old expired entries make room, none live evicted
    for i in range(10):
        assert rl.allow(f"new{i}", 100.0, q)
    assert len(rl) <= 10
    assert rl.evicted_live == 0
    assert rl.expire(1000.0) == len(rl) or len(rl) == 0


def test_flood_of_distinct_keys_keeps_memory_bounded_and_keeps_others() -> None:
    q = Quota(rps=1, burst=3)
    rl = RateLimiter(capacity=1000)
    # a regular client used up its burst
    for _ in range(3):
        assert rl.allow("regular", 0.0, q)
    assert not rl.allow("regular", 0.0, q)
    # 100k distinct addresses over 100 seconds (1000/s): entries live <= 3 s
    now = 0.0
    for i in range(100_000):
        now = i / 1000
        rl.allow(f"flood-{i}", now, q)
        if i % 997 == 0:
            rl.allow("regular", now, q)
        assert len(rl) <= 1000
    assert len(rl) <= 1000
    # the regular client was seen all along: its state was never reset
    tat = rl.peek("regular")
    assert tat is not None and tat > now


@settings(max_examples=200, deadline=None)
@given(
    rps=st.floats(min_value=0.5, max_value=1000),
    burst=st.integers(min_value=1, max_value=50),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300),
)
def test_gcra_never_exceeds_burst_plus_rate(rps: float, burst: int, gaps: list[float]) -> None:
    q = Quota(rps=rps, burst=burst)
    rl = RateLimiter(capacity=4)
    now = 0.0
    allowed_times: list[float] = []
    for gap in gaps:
        now += gap
        if rl.allow("c", now, q):
            allowed_times.append(now)
    # in every window [t0, t1] at most burst + (t1 - t0) * rps requests pass
    for i, t0 in enumerate(allowed_times):
        for j in range(i, len(allowed_times)):
            count = j - i + 1
            assert count <= burst + (allowed_times[j] - t0) * rps + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    rps=st.floats(min_value=1, max_value=100),
    burst=st.integers(min_value=1, max_value=20),
    n=st.integers(min_value=1, max_value=200),
)
def test_idle_client_gets_full_burst_back(rps: float, burst: int, n: int) -> None:
    q = Quota(rps=rps, burst=burst)
    rl = RateLimiter(capacity=8)
    for _ in range(n):
        rl.allow("c", 0.0, q)
    later = burst / rps + 1.0
    assert [rl.allow("c", later, q) for _ in range(burst)] == [True] * burst


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 0.2)), max_size=400))
def test_table_never_exceeds_capacity(events: list[tuple[int, float]]) -> None:
    q = Quota(rps=5, burst=2)
    rl = RateLimiter(capacity=7)
    now = 0.0
    for key, gap in events:
        now += gap
        rl.allow(str(key), now, q)
        assert len(rl) <= 7
