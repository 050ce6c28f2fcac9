"""Node instance subnets: the first free block of a pool (pure).

The operator gives every node its own instance subnet, a ``prefix``-sized block of the
instance network (``ZEITWORK_INSTANCE_NETWORK``), lowest address first; a block is free
when it overlaps no subnet a live node holds (some may be configured by hand, of any size,
inside or outside the pool).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPv4Network = ipaddress.IPv4Network


@dataclass(frozen=True, slots=True)
class SubnetPool:
    """Where the operator allocates node subnets: ``/prefix`` blocks of ``network``."""

    network: IPv4Network
    prefix: int


def first_free(pool: IPv4Network, prefix: int, taken: Iterable[IPv4Network]) -> IPv4Network | None:
    """The lowest ``/prefix`` block of ``pool`` that overlaps nothing in ``taken``."""
    if prefix < pool.prefixlen:
        raise ValueError(f"a /{prefix} does not fit in {pool}")
    busy = sorted((t for t in taken if t.overlaps(pool)), key=lambda n: int(n.network_address))
    size = 2 ** (32 - prefix)
    candidate = int(pool.network_address)
    end = int(pool.broadcast_address)
    for net in busy:
        low, high = int(net.network_address), int(net.broadcast_address)
        if candidate + size - 1 < low:
            break
        if high >= candidate:
            # skip past this subnet, to the next block boundary
            candidate = ((high + 1 + size - 1) // size) * size
    if candidate + size - 1 > end:
        return None
    return ipaddress.IPv4Network((candidate, prefix))


def overlapping(subnet: IPv4Network, taken: Iterable[IPv4Network]) -> list[IPv4Network]:
    return [t for t in taken if t.overlaps(subnet)]
