from __future__ import annotations

from pathlib import Path

from zeitwork.edge.metrics import Snapshot, merged, publish


def test_snapshots_round_trip_and_merge(tmp_path: Path) -> None:
    one = Snapshot(
        requests={("a.test", 200): 3, ("other", 404): 1},
        limited=2,
        entries=5,
        handshakes=4,
        completed=3,
        failed={"error": 1},
        open_connections=2,
        refused=1,
    )
    two = Snapshot(
        requests={("a.test", 200): 7},
        limited=1,
        evicted_live=1,
        entries=1,
        handshakes=2,
        completed=2,
        failed={"error": 2, "timeout": 1},
        open_connections=1,
    )
    assert Snapshot.from_json(one.to_json()) == one
    publish(tmp_path, 0, one)  # worker 0's own file is ignored: it counts itself live
    publish(tmp_path, 1, two)
    (tmp_path / "worker-2.json").write_text("{broken")
    total = merged(one, tmp_path, 0)
    assert total.requests == {("a.test", 200): 10, ("other", 404): 1}
    assert (total.limited, total.evicted_live, total.entries) == (3, 1, 6)
    assert (total.handshakes, total.completed) == (6, 5)
    assert total.failed == {"error": 3, "timeout": 1}
    assert (total.open_connections, total.refused) == (3, 1)
    assert merged(one, None, 0) == one
