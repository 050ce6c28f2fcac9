"""The candidate snapshot: expires, accounts for our own placements, drops refusing nodes."""

from __future__ import annotations

import uuid

from zeitwork.core.resources import Resources
from zeitwork.operator.scheduler.placement import NodeCandidate
from zeitwork.operator.scheduler.snapshot import CandidateSnapshots

REQ = Resources(millicpu=1000, memory_mib=1024)


def node(cpu: int, mem: int) -> NodeCandidate:
    return NodeCandidate(
        node_id=uuid.uuid4(),
        capacity=Resources(millicpu=cpu, memory_mib=mem),
        allocated=Resources(millicpu=0, memory_mib=0),
    )


def test_expires_after_ttl_and_is_per_size() -> None:
    snaps = CandidateSnapshots(ttl=0.5)
    a = node(2000, 2048)
    assert snaps.get(REQ, 0.0) is None
    snaps.put(REQ, [a], 10.0)
    assert snaps.get(REQ, 10.4) == [a]
    assert snaps.get(REQ, 10.6) is None
    assert snaps.get(Resources(millicpu=500, memory_mib=1), 10.1) is None


def test_own_placements_are_accounted_and_full_nodes_leave() -> None:
    snaps = CandidateSnapshots()
    a, b = node(2000, 2048), node(4000, 4096)
    small = Resources(millicpu=500, memory_mib=512)
    snaps.put(REQ, [a, b], 0.0)
    snaps.put(small, [a, b], 0.0)
    snaps.placed(a.node_id, REQ)
    [left_a] = [c for c in snaps.get(REQ, 0.1) or [] if c.node_id == a.node_id]
    assert left_a.free == Resources(millicpu=1000, memory_mib=1024)
    snaps.placed(a.node_id, REQ)  # now full for both sizes
    assert [c.node_id for c in snaps.get(REQ, 0.1) or []] == [b.node_id]
    assert [c.node_id for c in snaps.get(small, 0.1) or []] == [b.node_id]


def test_refused_nodes_leave_and_an_empty_snapshot_is_no_snapshot() -> None:
    snaps = CandidateSnapshots()
    a = node(2000, 2048)
    snaps.put(REQ, [a], 0.0)
    snaps.refused(REQ, a.node_id)
    assert snaps.get(REQ, 0.1) is None  # never "nothing fits" from a snapshot
    snaps.put(REQ, [a], 0.0)
    snaps.forget(REQ)
    assert snaps.get(REQ, 0.1) is None
