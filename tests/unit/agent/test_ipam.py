from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeitwork.agent.network import ipam
from zeitwork.core.errors import InsufficientCapacity, InvalidInput


def test_first_address_after_gateway_and_idempotent_per_owner() -> None:
    state = ipam.new_state("10.88.0.0/24")
    assert str(state.gateway) == "10.88.0.1"
    state, first = ipam.allocate(state, "a")
    assert str(first) == "10.88.0.2"
    same_state, again = ipam.allocate(state, "a")
    assert again == first and same_state is state


def test_released_address_is_not_reused_until_the_range_wraps() -> None:
    state = ipam.new_state("10.88.0.0/29")  # usable .2 .. .6
    state, a = ipam.allocate(state, "a")
    state = ipam.release(state, "a")
    handed = []
    for owner in "bcde":
        state, address = ipam.allocate(state, owner)
        handed.append(str(address))
    assert handed == ["10.88.0.3", "10.88.0.4", "10.88.0.5", "10.88.0.6"]
    state, f = ipam.allocate(state, "f")
    assert f == a  # only now, after wrapping
    with pytest.raises(InsufficientCapacity):
        ipam.allocate(state, "g")


def test_bad_subnets_are_refused() -> None:
    with pytest.raises(InvalidInput):
        ipam.new_state("10.88.0.1/24")  # host bits set
    with pytest.raises(InvalidInput):
        ipam.new_state("10.88.0.0/30")
    with pytest.raises(InvalidInput):
        ipam.new_state("not-a-net")


def test_retain_drops_unknown_owners() -> None:
    state = ipam.new_state("10.88.0.0/24")
    for owner in "abc":
        state, _ = ipam.allocate(state, owner)
    state = ipam.retain(state, {"b"})
    assert set(state.allocations) == {"b"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=60))
def test_never_two_owners_share_an_address(ops: list[tuple[bool, int]]) -> None:
    state = ipam.new_state("10.88.0.0/28")
    for is_alloc, owner_no in ops:
        owner = f"o{owner_no}"
        if is_alloc:
            state, address = ipam.allocate(state, owner)
            assert address in state.subnet
            assert address not in (state.gateway, state.subnet.network_address)
            assert address != state.subnet.broadcast_address
        else:
            state = ipam.release(state, owner)
        values = list(state.allocations.values())
        assert len(values) == len(set(values))


def test_file_persists_atomically_and_survives_reload(tmp_path: Path) -> None:
    path = tmp_path / "ipam.json"
    first = ipam.IpamFile(path=path, subnet="10.77.0.0/24")
    address = first.allocate("x")
    assert json.loads(path.read_text())["allocations"] == {"x": str(address)}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    second = ipam.IpamFile(path=path, subnet="10.77.0.0/24")
    assert second.allocate("y") == ipaddress.IPv4Address("10.77.0.3")
    assert second.allocate("x") == address
    second.release("x")
    assert "x" not in ipam.IpamFile(path=path, subnet="10.77.0.0/24").state.allocations
    with pytest.raises(InvalidInput, match=r"manages 10\.77\.0\.0/24"):
        ipam.IpamFile(path=path, subnet="10.78.0.0/24")
    assert not list(tmp_path.glob(".*tmp"))
