"""First free node subnet of a pool (pure)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeitwork.operator.scheduler.subnets import first_free

N = ipaddress.IPv4Network
POOL = N("10.88.0.0/16")


def test_lowest_block_first_and_skips_taken() -> None:
    assert first_free(POOL, 24, []) == N("10.88.0.0/24")
    assert first_free(POOL, 24, [N("10.88.0.0/24")]) == N("10.88.1.0/24")
    assert first_free(POOL, 24, [N("10.88.0.0/24"), N("10.88.2.0/24")]) == N("10.88.1.0/24")
    # a hand-configured bigger or smaller subnet blocks every block it overlaps
    assert first_free(POOL, 24, [N("10.88.0.0/23")]) == N("10.88.2.0/24")
    assert first_free(POOL, 24, [N("10.88.0.128/29")]) == N("10.88.1.0/24")
    # outside the pool: irrelevant
    assert first_free(POOL, 24, [N("10.99.0.0/24")]) == N("10.88.0.0/24")


def test_full_pool_and_bad_prefix() -> None:
    assert first_free(N("10.1.0.0/23"), 24, [N("10.1.0.0/24"), N("10.1.1.0/24")]) is None
    assert first_free(N("10.1.0.0/24"), 24, [N("10.0.0.0/8")]) is None
    with pytest.raises(ValueError, match="does not fit"):
        first_free(N("10.1.0.0/24"), 16, [])


@settings(max_examples=200, deadline=None)
@given(
    taken=st.lists(
        st.tuples(st.integers(0, 255), st.integers(20, 28)).map(
            lambda t: N((int(POOL.network_address) + t[0] * 256, t[1]), strict=False)
        ),
        max_size=12,
    ),
    prefix=st.integers(20, 28),
)
def test_never_overlaps_and_is_the_lowest(taken: list[N], prefix: int) -> None:
    found = first_free(POOL, prefix, taken)
    blocks = list(POOL.subnets(new_prefix=prefix))
    free = [b for b in blocks if not any(b.overlaps(t) for t in taken)]
    assert found == (free[0] if free else None)
