from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from zeitwork.lb.metrics import LBMetrics
from zeitwork.proxy.backends import Backend


def test_counters_histogram_and_transitions_are_exposed() -> None:
    registry = CollectorRegistry()
    m = LBMetrics(registry=registry)
    m.request_done("app.test", "10.0.0.1:80", 200, 0.004)
    m.request_done("app.test", "10.0.0.1:80", 200, 0.2)
    m.request_done("default", "-", 503, 0.0)
    m.connections_changed(3)
    m.connections_changed(-1)
    m.health_changed(Backend("10.0.0.1:80"), "active", False)
    text = generate_latest(registry).decode()
    assert (
        'zeitwork_lb_requests_total{backend="10.0.0.1:80",route="app.test",status="200"} 2.0'
        in text
    )
    assert 'zeitwork_lb_requests_total{backend="-",route="default",status="503"} 1.0' in text
    assert (
        'zeitwork_lb_upstream_latency_seconds_bucket{backend="10.0.0.1:80",le="0.005"} 1.0' in text
    )
    assert (
        'zeitwork_lb_upstream_latency_seconds_bucket{backend="10.0.0.1:80",le="+Inf"} 2.0' in text
    )
    assert 'zeitwork_lb_upstream_latency_seconds_count{backend="10.0.0.1:80"} 2.0' in text
    assert "zeitwork_lb_open_connections 2.0" in text
    assert (
        'zeitwork_lb_health_transitions_total{backend="10.0.0.1:80",kind="active",to="down"} 1.0'
        in text
    )


def test_worker_snapshots_are_merged() -> None:
    other = LBMetrics()
    other.request_done("default", "b:1", 200, 0.01)
    other.request_done("default", "b:1", 200, 0.01)
    other.connections_changed(5)
    registry = CollectorRegistry()
    own = LBMetrics(registry=registry, peers=lambda: [other.snapshot()])
    own.request_done("default", "b:1", 200, 0.01)
    text = generate_latest(registry).decode()
    assert 'zeitwork_lb_requests_total{backend="b:1",route="default",status="200"} 3.0' in text
    assert 'zeitwork_lb_upstream_latency_seconds_count{backend="b:1"} 3.0' in text
    assert "zeitwork_lb_open_connections 5.0" in text


def test_per_route_series_add_pools_up_by_host_and_merge_across_workers() -> None:
    other = LBMetrics()
    other.request_done("app.test/api", "b:1", 201, 0.01, 7, 9)  # a path-prefix route's pool
    registry = CollectorRegistry()
    own = LBMetrics(registry=registry, peers=lambda: [other.snapshot()])
    own.request_done("app.test", "b:1", 200, 0.01, 3, 1)
    own.request_done("default", "c:1", 502, 0.02, 0, 0)  # an unknown host
    own.request_done("-", "-", 400, 0.0, 0, 0)  # refused before routing
    text = generate_latest(registry).decode()
    assert 'zeitwork_lb_route_requests_total{class="2xx",route="app.test"} 2.0' in text
    assert 'zeitwork_lb_route_requests_total{class="5xx",route="other"} 1.0' in text
    assert 'zeitwork_lb_route_requests_total{class="4xx",route="other"} 1.0' in text
    assert 'zeitwork_lb_route_bytes_total{direction="in",route="app.test"} 10.0' in text
    assert 'zeitwork_lb_route_bytes_total{direction="out",route="app.test"} 10.0' in text
    assert 'zeitwork_lb_route_upstream_latency_seconds_count{route="app.test"} 2.0' in text
    route_lines = [line for line in text.splitlines() if line.startswith("zeitwork_lb_route_")]
    assert route_lines and not [line for line in route_lines if 'route="default"' in line]
    totals = own.route_totals()
    assert set(totals) == {"app.test", "other"}
    merged = LBMetrics.merge([own.snapshot(), other.snapshot()])
    assert merged["routes"] == totals
