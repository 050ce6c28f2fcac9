"""Where an instance should run: pure functions over a snapshot of node capacity.

The decision is pure; the database applies it. A ``PlacementPlan`` lists the feasible nodes in order
of preference; the store tries them in order with a conditional ``UPDATE`` that re-checks
free capacity under the row lock, so a snapshot that is stale by the time it is applied can
never over-commit a node (it only moves the instance to the next candidate).

Order of preference:

1. **spread**: fewer instances of the same deployment on the node first, so replicas of one
   deployment land on different nodes while there are nodes to spare;
2. **bin-packing** (default): the tightest fit first (least free vCPU, then memory, left
   after placing), which keeps large holes free for large instances; the ``spread``
   strategy prefers the emptiest node instead;
3. the node id XOR ``salt`` (0 by default: plain node id order), so that equal candidates
   are ordered deterministically; each operator process uses its own salt, so that
   processes placing at the same moment start on different nodes among equals.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from zeitwork.core.resources import Resources


class Strategy(StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"


@dataclass(frozen=True, slots=True)
class NodeCandidate:
    """One ready node as the scheduler sees it."""

    node_id: uuid.UUID
    capacity: Resources
    allocated: Resources
    replicas: int = 0
    """Instances of the deployment being placed that already run on this node."""

    @property
    def free(self) -> Resources:
        return self.capacity - self.allocated

    def fits(self, request: Resources) -> bool:
        return request.fits_in(self.free)


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    """Feasible nodes, most preferred first (never empty)."""

    node_ids: tuple[uuid.UUID, ...]

    @property
    def best(self) -> uuid.UUID:
        return self.node_ids[0]


@dataclass(frozen=True, slots=True)
class NoFit:
    """Nothing fits: what was asked, how many ready nodes there were, and the shortfall
    against the node that came closest (empty when there is no ready node at all)."""

    request: Resources
    ready_nodes: int
    best_free: Resources | None
    shortfall: dict[str, float]

    def message(self) -> str:
        wanted = _describe(self.request)
        if self.ready_nodes == 0 or self.best_free is None:
            return f"no ready node to place an instance needing {wanted}"
        short = ", ".join(
            f"{value:g} vCPU" if key == "vcpu" else f"{value:g} MiB {key}"
            for key, value in self.shortfall.items()
        )
        return (
            f"no ready node has {wanted} free ({self.ready_nodes} ready); the closest has "
            f"{_describe(self.best_free)} free, short by {short}"
        )


def _describe(amount: Resources) -> str:
    return f"{amount.vcpu:g} vCPU and {amount.memory_mib} MiB memory"


Decision = PlacementPlan | NoFit


def _key(
    c: NodeCandidate, request: Resources, strategy: Strategy, salt: int
) -> tuple[int, int, int, int]:
    left = c.free - request
    tie = c.node_id.int ^ salt
    if strategy is Strategy.SPREAD:
        return (c.replicas, -left.millicpu, -left.memory_mib, tie)
    return (c.replicas, left.millicpu, left.memory_mib, tie)


def _closest(candidates: Sequence[NodeCandidate], request: Resources) -> NoFit:
    if not candidates:
        return NoFit(request=request, ready_nodes=0, best_free=None, shortfall={})

    def badness(c: NodeCandidate) -> tuple[float, float, str]:
        short = request.shortfall(c.free)
        # normalise: 1 vCPU missing weighs like 1 GiB missing
        return (short.get("vcpu", 0) + short.get("memory", 0) / 1024, 0.0, str(c.node_id))

    best = min(candidates, key=badness)
    return NoFit(
        request=request,
        ready_nodes=len(candidates),
        best_free=best.free,
        shortfall=request.shortfall(best.free),
    )


def place(
    candidates: Iterable[NodeCandidate],
    request: Resources,
    *,
    strategy: Strategy = Strategy.BINPACK,
    salt: int = 0,
) -> Decision:
    """Rank the nodes that can take ``request``; NoFit (with the shortfall) if none can."""
    pool = list(candidates)
    feasible = [c for c in pool if c.fits(request)]
    if not feasible:
        return _closest(pool, request)
    feasible.sort(key=lambda c: _key(c, request, strategy, salt))
    return PlacementPlan(node_ids=tuple(c.node_id for c in feasible))


def place_replicas(
    candidates: Iterable[NodeCandidate],
    request: Resources,
    count: int,
    *,
    strategy: Strategy = Strategy.BINPACK,
) -> list[uuid.UUID] | NoFit:
    """Choose a node for each of ``count`` replicas (spread first), accounting for what the
    earlier replicas take; NoFit when one of them cannot be placed."""
    pool = {c.node_id: c for c in candidates}
    chosen: list[uuid.UUID] = []
    for _ in range(count):
        decision = place(pool.values(), request, strategy=strategy)
        if isinstance(decision, NoFit):
            return decision
        node = pool[decision.best]
        pool[node.node_id] = replace(
            node, allocated=node.allocated + request, replicas=node.replicas + 1
        )
        chosen.append(node.node_id)
    return chosen
