from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeitwork.proxy.balancing import IpHash, LeastConnections, RoundRobin, make_balancer


@dataclass(eq=False)
class Cand:
    key: str
    weight: int = 1
    in_flight: int = 0


def cands(n: int, weights: list[int] | None = None) -> list[Cand]:
    return [Cand(f"10.0.0.{i}:80", (weights or [1] * n)[i]) for i in range(n)]


def test_empty_balancers_pick_nothing() -> None:
    for name in ("round-robin", "least-connections", "ip-hash"):
        b = make_balancer(name)  # type: ignore[arg-type]
        b.update([])
        assert b.pick("1.2.3.4") is None


def test_unknown_algorithm_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown balancing algorithm"):
        make_balancer("random")  # type: ignore[arg-type]


@pytest.mark.parametrize("n", range(1, 7))
@pytest.mark.parametrize("offset", range(0, 7))
def test_round_robin_every_window_is_exact(n: int, offset: int) -> None:
    rr = RoundRobin()
    items = cands(n)
    rr.update(items)
    for _ in range(offset):
        rr.pick("ip")
    for k in (1, 2, 5):
        counts = Counter(rr.pick("ip").key for _ in range(n * k))  # type: ignore[union-attr]
        assert sorted(counts.values()) == [k] * n


@given(
    n=st.integers(1, 12),
    before=st.integers(0, 50),
    window=st.integers(1, 200),
)
def test_round_robin_any_window_within_one(n: int, before: int, window: int) -> None:
    rr = RoundRobin()
    items = cands(n)
    rr.update(items)
    for _ in range(before):
        rr.pick("ip")
    counts = Counter(rr.pick("ip").key for _ in range(window))  # type: ignore[union-attr]
    values = [counts.get(c.key, 0) for c in items]
    assert max(values) - min(values) <= 1


@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=8), rounds=st.integers(1, 4))
def test_weighted_round_robin_honours_weights(weights: list[int], rounds: int) -> None:
    rr = RoundRobin()
    items = cands(len(weights), weights)
    rr.update(items)
    total = sum(weights)
    counts = Counter(rr.pick("ip").key for _ in range(total * rounds))  # type: ignore[union-attr]
    assert [counts[c.key] for c in items] == [w * rounds for w in weights]


def test_round_robin_exclude_skips_failed_backend() -> None:
    rr = RoundRobin()
    items = cands(3)
    rr.update(items)
    for _ in range(10):
        assert rr.pick("ip", exclude=items[0]) is not items[0]
    single = RoundRobin()
    single.update(items[:1])
    assert single.pick("ip", exclude=items[0]) is items[0]  # nothing else to choose


def test_round_robin_zero_weight_is_out_of_rotation() -> None:
    rr = RoundRobin()
    items = cands(3, [1, 0, 1])
    rr.update(items)
    assert items[1] not in {rr.pick("ip") for _ in range(10)}


@given(loads=st.lists(st.integers(0, 20), min_size=1, max_size=10))
def test_least_connections_picks_a_minimum(loads: list[int]) -> None:
    lc = LeastConnections()
    items = cands(len(loads))
    for c, load in zip(items, loads, strict=True):
        c.in_flight = load
    lc.update(items)
    chosen = lc.pick("ip")
    assert chosen is not None
    assert chosen.in_flight == min(loads)


@pytest.mark.parametrize("n", range(1, 6))
def test_least_connections_ties_rotate(n: int) -> None:
    lc = LeastConnections()
    items = cands(n)
    lc.update(items)
    picks = [lc.pick("ip") for _ in range(n * 3)]
    counts = Counter(p.key for p in picks if p is not None)
    assert sorted(counts.values()) == [3] * n


def test_least_connections_tracks_in_flight() -> None:
    lc = LeastConnections()
    items = cands(3)
    lc.update(items)
    for _ in range(9):
        chosen = lc.pick("ip")
        assert chosen is not None
        chosen.in_flight += 1  # requests that never finish
    assert [c.in_flight for c in items] == [3, 3, 3]


def test_least_connections_weights() -> None:
    lc = LeastConnections()
    items = cands(2, [1, 3])
    lc.update(items)
    for _ in range(40):
        chosen = lc.pick("ip")
        assert chosen is not None
        chosen.in_flight += 1
    assert items[0].in_flight == 10
    assert items[1].in_flight == 30


def _ips(count: int) -> list[str]:
    base = int(ipaddress.ip_address("100.64.0.0"))
    return [str(ipaddress.ip_address(base + i * 7919)) for i in range(count)]


def test_ip_hash_is_sticky_and_ignores_nothing_but_ip() -> None:
    h = IpHash()
    items = cands(5)
    h.update(items)
    for ip in _ips(200):
        first = h.pick(ip)
        assert all(h.pick(ip) is first for _ in range(3))


def test_ip_hash_spreads_clients() -> None:
    h = IpHash()
    items = cands(5)
    h.update(items)
    counts = Counter(h.pick(ip).key for ip in _ips(10000))  # type: ignore[union-attr]
    mean = 10000 / 5
    assert all(0.7 * mean < v < 1.3 * mean for v in counts.values()), counts


@pytest.mark.parametrize("n", [3, 5, 8])
def test_ip_hash_adding_a_backend_moves_about_one_nth(n: int) -> None:
    h = IpHash()
    items = cands(n + 1)
    h.update(items[:n])
    ips = _ips(6000)
    before = {ip: h.pick(ip) for ip in ips}
    h.update(items)
    after = {ip: h.pick(ip) for ip in ips}
    moved = [ip for ip in ips if before[ip] is not after[ip]]
    # consistent hashing: only clients that now belong to the new backend move
    assert all(after[ip] is items[n] for ip in moved)
    share = len(moved) / len(ips)
    assert 0.5 / (n + 1) < share < 1.6 / (n + 1), share


@given(n=st.integers(2, 8), removed=st.integers(0, 7))
@settings(max_examples=25, deadline=None)
def test_ip_hash_removing_moves_only_that_backends_clients(n: int, removed: int) -> None:
    removed %= n
    h = IpHash()
    items = cands(n)
    h.update(items)
    ips = _ips(1500)
    before = {ip: h.pick(ip) for ip in ips}
    h.update([c for i, c in enumerate(items) if i != removed])
    for ip in ips:
        if before[ip] is not items[removed]:
            assert h.pick(ip) is before[ip]
        else:
            assert h.pick(ip) is not items[removed]


def test_ip_hash_exclude_moves_to_another() -> None:
    h = IpHash()
    items = cands(3)
    h.update(items)
    for ip in _ips(50):
        owner = h.pick(ip)
        other = h.pick(ip, exclude=owner)
        assert other is not None
        assert other is not owner
