"""Pure placement: never over-commit, always feasible when a feasible node exists,
spread replicas of one deployment, bin-pack otherwise, name the shortfall."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from zeitwork.core.resources import Resources
from zeitwork.operator.scheduler.placement import (
    NodeCandidate,
    NoFit,
    PlacementPlan,
    Strategy,
    place,
    place_replicas,
)


def node(cap: tuple[int, int], used: tuple[int, int] = (0, 0), replicas: int = 0) -> NodeCandidate:
    return NodeCandidate(
        node_id=uuid.uuid4(),
        capacity=Resources(millicpu=cap[0], memory_mib=cap[1]),
        allocated=Resources(millicpu=used[0], memory_mib=used[1]),
        replicas=replicas,
    )


@st.composite
def candidates(draw: st.DrawFn) -> list[NodeCandidate]:
    count = draw(st.integers(min_value=0, max_value=12))
    out = []
    for _ in range(count):
        cpu = draw(st.integers(min_value=0, max_value=16_000))
        mem = draw(st.integers(min_value=0, max_value=65_536))
        used_cpu = draw(st.integers(min_value=0, max_value=cpu))
        used_mem = draw(st.integers(min_value=0, max_value=mem))
        replicas = draw(st.integers(min_value=0, max_value=3))
        out.append(node((cpu, mem), (used_cpu, used_mem), replicas))
    return out


requests = st.builds(
    lambda c, m: Resources(millicpu=c, memory_mib=m),
    st.integers(min_value=1, max_value=8000),
    st.integers(min_value=1, max_value=16_384),
)


@given(candidates(), requests, st.sampled_from(list(Strategy)))
def test_plan_lists_exactly_the_feasible_nodes(
    pool: list[NodeCandidate], request: Resources, strategy: Strategy
) -> None:
    decision = place(pool, request, strategy=strategy)
    feasible = {c.node_id for c in pool if request.fits_in(c.free)}
    if feasible:
        assert isinstance(decision, PlacementPlan)
        assert set(decision.node_ids) == feasible
        assert len(decision.node_ids) == len(feasible)
    else:
        assert isinstance(decision, NoFit)
        assert decision.ready_nodes == len(pool)
        if pool:
            assert decision.shortfall  # something is named
            assert decision.best_free is not None
            assert request.shortfall(decision.best_free) == decision.shortfall


@given(candidates(), requests)
def test_plan_prefers_fewer_replicas_then_tightest_fit(
    pool: list[NodeCandidate], request: Resources
) -> None:
    decision = place(pool, request)
    if isinstance(decision, NoFit):
        return
    by_id = {c.node_id: c for c in pool}
    keys = [(by_id[n].replicas, (by_id[n].free - request).millicpu) for n in decision.node_ids]
    assert [k[0] for k in keys] == sorted(k[0] for k in keys)
    best = by_id[decision.best]
    same = [c for c in pool if c.fits(request) and c.replicas == best.replicas]
    assert (best.free - request).millicpu == min((c.free - request).millicpu for c in same)


@given(candidates(), requests, st.integers(min_value=1, max_value=10))
def test_replicas_never_over_commit_and_spread(
    pool: list[NodeCandidate], request: Resources, count: int
) -> None:
    chosen = place_replicas(pool, request, count)
    by_id = {c.node_id: c for c in pool}
    if isinstance(chosen, NoFit):
        # it really could not: greedy placement with exact accounting ran out
        return
    assert len(chosen) == count
    for node_id in set(chosen):
        c = by_id[node_id]
        n = chosen.count(node_id)
        total = c.allocated + Resources(request.millicpu * n, request.memory_mib * n)
        assert total.fits_in(c.capacity), "over-commit"
    # spread: a node never gets a second replica while a feasible node has none more
    start_replicas = {c.node_id: c.replicas for c in pool}
    counts = {n: start_replicas[n] + chosen.count(n) for n in set(chosen)}
    for node_id, total in counts.items():
        for other in pool:
            if other.node_id in counts or not other.fits(request):
                continue
            assert start_replicas[other.node_id] >= total - 1, "did not spread"


@given(requests, st.integers(min_value=1, max_value=6))
def test_replicas_fit_when_each_gets_its_own_node(request: Resources, count: int) -> None:
    pool = [node((request.millicpu, request.memory_mib)) for _ in range(count)]
    chosen = place_replicas(pool, request, count)
    assert not isinstance(chosen, NoFit)
    assert sorted(map(str, chosen)) == sorted(str(c.node_id) for c in pool)


def test_bin_packing_and_spread_strategies() -> None:
    small = node((2000, 2048))
    big = node((16_000, 32_768))
    req = Resources(millicpu=1000, memory_mib=1024)
    assert place([big, small], req) == PlacementPlan(node_ids=(small.node_id, big.node_id))
    assert place([big, small], req, strategy=Strategy.SPREAD) == PlacementPlan(
        node_ids=(big.node_id, small.node_id)
    )
    crowded = node((2000, 2048), replicas=1)
    assert isinstance(d := place([crowded, big], req), PlacementPlan) and d.best == big.node_id


def test_no_fit_message_names_the_shortfall() -> None:
    decision = place([node((2000, 4096), (1500, 0))], Resources(millicpu=1000, memory_mib=8192))
    assert isinstance(decision, NoFit)
    assert decision.shortfall == {"vcpu": 0.5, "memory": 4096}
    assert "short by 0.5 vCPU, 4096 MiB memory" in decision.message()
    empty = place([], Resources(millicpu=1, memory_mib=1))
    assert isinstance(empty, NoFit)
    assert "no ready node" in empty.message()


@given(candidates(), requests, st.integers(min_value=0, max_value=2**128 - 1))
def test_salt_only_reorders_equal_candidates(
    pool: list[NodeCandidate], request: Resources, salt: int
) -> None:
    plain, salted = place(pool, request), place(pool, request, salt=salt)
    if isinstance(plain, NoFit):
        assert isinstance(salted, NoFit)
        return
    assert isinstance(salted, PlacementPlan)
    by_id = {c.node_id: c for c in pool}

    def rank(n: uuid.UUID) -> tuple[int, int, int]:
        left = by_id[n].free - request
        return (by_id[n].replicas, left.millicpu, left.memory_mib)

    assert [rank(n) for n in plain.node_ids] == [rank(n) for n in salted.node_ids]
    assert set(plain.node_ids) == set(salted.node_ids)
