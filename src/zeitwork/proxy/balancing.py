"""Balancing algorithms: pure code over a candidate list, no I/O.

A balancer is told the current set of eligible candidates with ``update`` (when routes or
health change, not per request) and answers ``pick`` per request in O(1) (round-robin),
O(n) (least-connections) or O(log v) (ip-hash). ``exclude`` lets a retry avoid the
backend that just failed.

- ``RoundRobin``: equal weights cycle strictly, so any window of ``n*k`` picks gives every
  candidate exactly ``k``; unequal weights use smooth weighted round-robin.
- ``LeastConnections``: fewest in-flight requests (relative to weight); ties are broken
  round-robin.
- ``IpHash``: consistent hashing of the client IP (never the port) on a ring of virtual
  nodes, so adding or removing one of N candidates moves about 1/N of the clients.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from typing import Literal, Protocol, TypeVar

AlgorithmName = Literal["round-robin", "least-connections", "ip-hash"]
ALGORITHMS: tuple[AlgorithmName, ...] = ("round-robin", "least-connections", "ip-hash")


class Candidate(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> int: ...

    @property
    def in_flight(self) -> int: ...


C = TypeVar("C", bound=Candidate)


class Balancer(Protocol[C]):
    def update(self, candidates: Sequence[C]) -> None: ...

    def pick(self, client_ip: str, exclude: C | None = None) -> C | None: ...


class RoundRobin:
    def __init__(self) -> None:
        self._items: list[Candidate] = []
        self._next = 0
        self._weighted = False
        self._current: list[int] = []
        self._total = 0

    def update(self, candidates: Sequence[Candidate]) -> None:
        items = [c for c in candidates if c.weight > 0]
        self._items = items
        weights = {c.weight for c in items}
        self._weighted = len(weights) > 1
        self._current = [0] * len(items)
        self._total = sum(c.weight for c in items)
        if items:
            self._next %= len(items)
        else:
            self._next = 0

    def pick(self, client_ip: str, exclude: Candidate | None = None) -> Candidate | None:
        items = self._items
        n = len(items)
        if n == 0:
            return None
        if self._weighted:
            return self._pick_weighted(exclude)
        i = self._next
        chosen = items[i]
        if chosen is exclude and n > 1:
            i = (i + 1) % n
            chosen = items[i]
        self._next = (i + 1) % n
        return chosen

    def _pick_weighted(self, exclude: Candidate | None) -> Candidate | None:
        # nginx's smooth weighted round-robin: add each weight, take the largest, subtract total
        best = -1
        best_value = 0
        items = self._items
        current = self._current
        total = 0
        for i, c in enumerate(items):
            if c is exclude and len(items) > 1:
                continue
            current[i] += c.weight
            total += c.weight
            if best < 0 or current[i] > best_value:
                best = i
                best_value = current[i]
        if best < 0:
            return None
        current[best] -= total
        return items[best]


class LeastConnections:
    def __init__(self) -> None:
        self._items: list[Candidate] = []
        self._start = 0

    def update(self, candidates: Sequence[Candidate]) -> None:
        self._items = [c for c in candidates if c.weight > 0]
        self._start = self._start % len(self._items) if self._items else 0

    def pick(self, client_ip: str, exclude: Candidate | None = None) -> Candidate | None:
        items = self._items
        n = len(items)
        if n == 0:
            return None
        start = self._start
        best: Candidate | None = None
        best_index = 0
        best_load = 0
        best_weight = 1
        for offset in range(n):
            i = (start + offset) % n
            c = items[i]
            if c is exclude and n > 1:
                continue
            load = c.in_flight
            weight = c.weight
            # compare load/weight without division: load * best_weight < best_load * weight
            if best is None or load * best_weight < best_load * weight:
                best = c
                best_index = i
                best_load = load
                best_weight = weight
        self._start = (best_index + 1) % n
        return best


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class IpHash:
    """Consistent hashing on a ring of ``replicas * weight`` virtual nodes per candidate."""

    def __init__(self, *, replicas: int = 160) -> None:
        self._replicas = replicas
        self._points: list[int] = []
        self._owners: list[Candidate] = []
        self._count = 0
        self._cache: dict[str, int] = {}

    def update(self, candidates: Sequence[Candidate]) -> None:
        ring: list[tuple[int, str, Candidate]] = []
        for c in candidates:
            if c.weight <= 0:
                continue
            for r in range(self._replicas * c.weight):
                ring.append((_hash64(f"{c.key}#{r}"), c.key, c))
        ring.sort(key=lambda item: (item[0], item[1]))
        self._points = [p for p, _, _ in ring]
        self._owners = [c for _, _, c in ring]
        self._count = len({id(c) for c in self._owners})

    def _slot(self, client_ip: str) -> int:
        h = self._cache.get(client_ip)
        if h is None:
            h = _hash64(client_ip)
            if len(self._cache) >= 65536:
                self._cache.clear()
            self._cache[client_ip] = h
        i = bisect.bisect_left(self._points, h)
        return 0 if i == len(self._points) else i

    def pick(self, client_ip: str, exclude: Candidate | None = None) -> Candidate | None:
        if not self._points:
            return None
        i = self._slot(client_ip)
        owner = self._owners[i]
        if owner is not exclude or self._count < 2:
            return owner
        n = len(self._owners)
        for step in range(1, n):
            other = self._owners[(i + step) % n]
            if other is not exclude:
                return other
        return owner


def make_balancer(name: AlgorithmName) -> RoundRobin | LeastConnections | IpHash:
    """The registry of algorithms (a ``Literal``-typed name -> a fresh balancer)."""
    if name == "round-robin":
        return RoundRobin()
    if name == "least-connections":
        return LeastConnections()
    if name == "ip-hash":
        return IpHash()
    raise ValueError(f"unknown balancing algorithm {name!r}; expected one of {ALGORITHMS}")
