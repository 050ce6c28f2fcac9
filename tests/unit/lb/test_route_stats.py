from __future__ import annotations

import pytest

from zeitwork.lb import route_stats
from zeitwork.lb.route_stats import OTHER, RouteStats, as_json, merge, status_class


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (0, "1xx"),
        (101, "1xx"),
        (200, "2xx"),
        (299, "2xx"),
        (304, "3xx"),
        (404, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (503, "5xx"),
        (599, "5xx"),
        (700, "5xx"),
    ],
)
def test_status_classes(status: int, cls: str) -> None:
    assert route_stats.CLASSES[status_class(status)] == cls


def test_counts_bytes_and_latency_per_route() -> None:
    stats = RouteStats()
    stats.record("app.test", 200, 0.004, 10, 100)
    stats.record("app.test", 503, 0.2, 0, 5)
    stats.record("app.test", 404, 0.0, 0, 0)  # a local answer: no latency sample
    stats.record(OTHER, 400, 0.0, 0, 0)
    body = as_json(stats.snapshot())
    assert list(body) == ["app.test", "other"]
    app = body["app.test"]
    assert app["requests"] == 3
    assert app["status"] == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 1}
    assert (app["bytes_in"], app["bytes_out"]) == (10, 105)
    assert app["latency"]["count"] == 2
    assert app["latency"]["sum"] == pytest.approx(0.204)
    bounds = route_stats.BOUNDS
    counts = app["latency"]["counts"]
    assert len(counts) == len(bounds) + 1
    assert counts[bounds.index(0.005)] == 1  # 0.004 <= 0.005
    assert counts[bounds.index(0.25)] == 1
    assert body["other"]["status"]["4xx"] == 1


def test_labels_are_bounded() -> None:
    stats = RouteStats(max_routes=2)
    for host in ("a.test", "b.test", "c.test", "d.test"):
        stats.record(host, 200, 0.01, 0, 0)
    rows = as_json(stats.snapshot())
    assert set(rows) == {"a.test", "b.test", OTHER}
    assert rows[OTHER]["requests"] == 2
    stats.record("a.test", 200, 0.01, 0, 0)  # a known route still counts as itself
    assert as_json(stats.snapshot())["a.test"]["requests"] == 2


def test_workers_merge_route_by_route() -> None:
    one, two = RouteStats(), RouteStats()
    one.record("app.test", 200, 0.01, 1, 2)
    two.record("app.test", 200, 0.01, 3, 4)
    two.record("api.test", 500, 0.5, 0, 0)
    merged = as_json(merge([one.snapshot(), two.snapshot()]))
    assert merged["app.test"]["requests"] == 2
    assert (merged["app.test"]["bytes_in"], merged["app.test"]["bytes_out"]) == (4, 6)
    assert merged["api.test"]["status"]["5xx"] == 1
    assert merge([]) == {}


def test_histogram_is_cumulative() -> None:
    stats = RouteStats()
    stats.record("a", 200, 0.001, 0, 0)
    stats.record("a", 200, 100.0, 0, 0)  # past the last bound: +Inf only
    buckets, total = route_stats.histogram(stats.snapshot()["a"])
    assert buckets[-1] == ("+Inf", 2.0)
    assert buckets[-2][1] == 1.0
    assert total == pytest.approx(100.001)


def test_pools_add_up_by_route() -> None:
    stats = RouteStats()
    stats.record("app.test", 200, 0.01, 1, 1)
    stats.record("app.test/api", 500, 0.01, 1, 1)
    stats.record("default", 200, 0.01, 0, 0)
    routes = {"app.test": "app.test", "app.test/api": "app.test"}
    rows = as_json(stats.by_route(routes.get))
    assert set(rows) == {"app.test", OTHER}
    assert rows["app.test"]["requests"] == 2
    assert rows["app.test"]["bytes_in"] == 2
    assert rows[OTHER]["requests"] == 1
