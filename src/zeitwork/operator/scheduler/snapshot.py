"""A process-local, short-lived snapshot of placement candidates (pure, no I/O).

Reading the candidate nodes costs a database round trip per placement; under load that
round trip (and the context switches it implies) is most of a placement's latency. The
scheduler therefore keeps, per request size, the candidates it last read for up to
``ttl`` seconds, and updates them with its own placements. The snapshot is only a
*guess*: every placement is applied with the conditional ``UPDATE`` that re-checks free
capacity under the row lock, so a stale snapshot can cost a retry, never an over-commit.
A node that refused a placement is dropped from the snapshot; "nothing fits" is never
concluded from a snapshot, only from a fresh read.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from zeitwork.core.resources import Resources
from zeitwork.operator.scheduler.placement import NodeCandidate

_MAX_SIZES = 64


@dataclass
class _CachedNodes:
    taken_at: float
    candidates: dict[uuid.UUID, NodeCandidate] = field(default_factory=dict)


class CandidateSnapshots:
    def __init__(self, *, ttl: float = 0.5) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[int, int], _CachedNodes] = {}

    @staticmethod
    def _key(request: Resources) -> tuple[int, int]:
        return (request.millicpu, request.memory_mib)

    def get(self, request: Resources, now: float) -> list[NodeCandidate] | None:
        """The snapshot for this request size, or None when there is none or it is old."""
        entry = self._entries.get(self._key(request))
        if entry is None or now - entry.taken_at > self.ttl or not entry.candidates:
            return None
        return list(entry.candidates.values())

    def put(self, request: Resources, candidates: Iterable[NodeCandidate], now: float) -> None:
        if len(self._entries) >= _MAX_SIZES:
            self._entries.clear()
        self._entries[self._key(request)] = _CachedNodes(
            taken_at=now, candidates={c.node_id: c for c in candidates}
        )

    def placed(self, node_id: uuid.UUID, amount: Resources) -> None:
        """Our own placement took ``amount`` on ``node_id``: account for it in every size's
        snapshot (and drop the node where the next request would no longer fit)."""
        for (cpu, mem), entry in self._entries.items():
            found = entry.candidates.get(node_id)
            if found is None:
                continue
            updated = replace(found, allocated=found.allocated + amount)
            if updated.fits(Resources(millicpu=cpu, memory_mib=mem)):
                entry.candidates[node_id] = updated
            else:
                del entry.candidates[node_id]

    def refused(self, request: Resources, node_id: uuid.UUID) -> None:
        """The node refused a placement of this size (full, locked, not ready any more)."""
        entry = self._entries.get(self._key(request))
        if entry is not None:
            entry.candidates.pop(node_id, None)

    def forget(self, request: Resources) -> None:
        self._entries.pop(self._key(request), None)
