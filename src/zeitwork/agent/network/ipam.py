"""Address management for one node subnet: pure allocation, persisted by the caller.

The first host address is the bridge (gateway). Addresses are handed out round-robin from a
cursor, so a released address is reused only after the whole range has been used once, and an
address held by one owner is never handed to another while it is held.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zeitwork.core.errors import InsufficientCapacity, InvalidInput
from zeitwork.core.files import atomic_write_json


@dataclass(frozen=True, slots=True)
class IpamState:
    subnet: ipaddress.IPv4Network
    allocations: Mapping[str, ipaddress.IPv4Address] = field(default_factory=dict)
    cursor: int = 0  # offset of the last address handed out

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def prefix_len(self) -> int:
        return self.subnet.prefixlen

    def to_json(self) -> dict[str, Any]:
        return {
            "subnet": str(self.subnet),
            "allocations": {owner: str(ip) for owner, ip in sorted(self.allocations.items())},
            "cursor": self.cursor,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> IpamState:
        subnet = ipaddress.IPv4Network(value["subnet"])
        allocations = {str(k): ipaddress.IPv4Address(v) for k, v in value["allocations"].items()}
        return cls(subnet=subnet, allocations=allocations, cursor=int(value.get("cursor", 0)))


def new_state(subnet: str) -> IpamState:
    try:
        network = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise InvalidInput(f"node subnet {subnet!r} is not an IPv4 network: {exc}") from exc
    if network.num_addresses < 8:
        raise InvalidInput(f"node subnet {subnet} is too small (at least a /29)")
    return IpamState(subnet=network)


def allocate(state: IpamState, owner: str) -> tuple[IpamState, ipaddress.IPv4Address]:
    """Give ``owner`` an address (the same one again if it already holds one)."""
    held = state.allocations.get(owner)
    if held is not None:
        return state, held
    used = set(state.allocations.values())
    # usable host offsets: 2 .. num_addresses-2 (.0 network, .1 gateway, last broadcast)
    first, last = 2, state.subnet.num_addresses - 2
    span = last - first + 1
    start = max(state.cursor, first - 1)
    for step in range(1, span + 1):
        offset = first + (start - first + step) % span
        candidate = state.subnet.network_address + offset
        if candidate not in used:
            allocations = {**state.allocations, owner: candidate}
            return replace(state, allocations=allocations, cursor=offset), candidate
    raise InsufficientCapacity(f"no free address left in {state.subnet}")


def release(state: IpamState, owner: str) -> IpamState:
    if owner not in state.allocations:
        return state
    allocations = {k: v for k, v in state.allocations.items() if k != owner}
    return replace(state, allocations=allocations)


def retain(state: IpamState, owners: set[str]) -> IpamState:
    """Release every address whose owner is not in ``owners`` (recovery after a restart)."""
    allocations = {k: v for k, v in state.allocations.items() if k in owners}
    return replace(state, allocations=allocations)


class IpamFile:
    """The IPAM state of a node, loaded from and saved to one JSON file atomically."""

    def __init__(self, *, path: Path, subnet: str) -> None:
        self.path = path
        if path.exists():
            loaded = IpamState.from_json(json.loads(path.read_text()))
            if str(loaded.subnet) != str(new_state(subnet).subnet):
                raise InvalidInput(
                    f"{path} manages {loaded.subnet} but the node subnet is now {subnet}; "
                    "stop the instances and remove the file to change it"
                )
            self.state = loaded
        else:
            self.state = new_state(subnet)

    def _save(self) -> None:
        atomic_write_json(self.path, self.state.to_json(), mode=0o600)

    def allocate(self, owner: str) -> ipaddress.IPv4Address:
        state, address = allocate(self.state, owner)
        if state is not self.state:
            self.state = state
            self._save()
        return address

    def release(self, owner: str) -> None:
        state = release(self.state, owner)
        if state is not self.state:
            self.state = state
            self._save()

    def retain(self, owners: set[str]) -> list[str]:
        dropped = sorted(set(self.state.allocations) - owners)
        if dropped:
            self.state = retain(self.state, owners)
            self._save()
        return dropped
