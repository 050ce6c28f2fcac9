"""Load balancer metrics: plain counters on the hot path, exposed by a Prometheus collector.

``request_done`` costs a few dict updates and two bisects; the Prometheus families are built
only when ``/metrics`` is scraped. With several workers, each worker's ``snapshot()`` is
merged at scrape time (the snapshot files of ``lb/main.py``). Per-route figures (by domain
host, bounded labels) live in ``lb/route_stats.py``; ``/stats/routes`` serves them as JSON.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from zeitwork.lb import route_stats
from zeitwork.lb.router import route_of_pool
from zeitwork.observability.metrics import LATENCY_BUCKETS
from zeitwork.proxy.backends import Backend

Snapshot = dict[str, Any]


class LBMetrics(Collector):
    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        peers: Callable[[], list[Snapshot]] | None = None,
    ) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # backend -> bucket counts + [sum] at the end
        self.open_connections = 0
        self.transitions: dict[tuple[str, str, str], int] = {}
        self._bounds = list(LATENCY_BUCKETS)
        self._peers = peers
        self.pools = route_stats.RouteStats()  # per pool; the views add them up per route
        self._pool_rows = self.pools.rows
        if registry is not None:
            registry.register(self)

    # -- Observer --------------------------------------------------------------------------------
    def request_done(  # noqa: PLR0917 - the Observer hook, positional on the hot path
        self,
        pool: str,
        backend: str,
        status: int,
        upstream_seconds: float,
        bytes_in: int = 0,
        bytes_out: int = 0,
    ) -> None:
        row = self._pool_rows.get(pool)
        if row is None:
            row = self.pools.row(pool)
        route_stats.add(row, status, upstream_seconds, bytes_in, bytes_out)
        key = (pool, backend, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if upstream_seconds > 0.0:
            counts = self.latency.get(backend)
            if counts is None:
                counts = self.latency[backend] = [0.0] * (len(self._bounds) + 2)
            counts[bisect.bisect_left(self._bounds, upstream_seconds)] += 1
            counts[-1] += upstream_seconds

    def connections_changed(self, delta: int) -> None:
        self.open_connections += delta

    def health_changed(self, backend: Backend, kind: str, available: bool) -> None:
        key = (backend.address, kind, "up" if available else "down")
        self.transitions[key] = self.transitions.get(key, 0) + 1

    # -- aggregation -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return {
            "requests": [[p, b, s, n] for (p, b, s), n in self.requests.items()],
            "latency": {b: list(c) for b, c in self.latency.items()},
            "open_connections": self.open_connections,
            "transitions": [[b, k, t, n] for (b, k, t), n in self.transitions.items()],
            "routes": self.pools.by_route(route_of_pool),
        }

    def route_totals(self) -> route_stats.RouteRows:
        """Per-route rows of every worker, merged."""
        snaps = [self.pools.by_route(route_of_pool)]
        if self._peers is not None:
            snaps.extend(p.get("routes", {}) for p in self._peers())
        return route_stats.merge(snaps)

    @staticmethod
    def merge(snapshots: list[Snapshot]) -> Snapshot:
        requests: dict[tuple[str, str, int], int] = {}
        latency: dict[str, list[float]] = {}
        transitions: dict[tuple[str, str, str], int] = {}
        open_connections = 0
        for snap in snapshots:
            for p, b, s, n in snap.get("requests", []):
                requests[(p, b, s)] = requests.get((p, b, s), 0) + n
            for b, counts in snap.get("latency", {}).items():
                have = latency.get(b)
                latency[b] = (
                    list(counts)
                    if have is None
                    else [x + y for x, y in zip(have, counts, strict=False)]
                )
            for b, k, t, n in snap.get("transitions", []):
                transitions[(b, k, t)] = transitions.get((b, k, t), 0) + n
            open_connections += int(snap.get("open_connections", 0))
        return {
            "requests": [[p, b, s, n] for (p, b, s), n in requests.items()],
            "latency": latency,
            "open_connections": open_connections,
            "transitions": [[b, k, t, n] for (b, k, t), n in transitions.items()],
            "routes": route_stats.merge(s.get("routes", {}) for s in snapshots),
        }

    # -- Prometheus collector ----------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        snaps = [self.snapshot()]
        if self._peers is not None:
            snaps.extend(self._peers())
        merged = self.merge(snaps) if len(snaps) > 1 else snaps[0]
        requests = CounterMetricFamily(
            "zeitwork_lb_requests",
            "Requests answered, by route (pool), status and backend",
            labels=["route", "status", "backend"],
        )
        for p, b, s, n in merged["requests"]:
            requests.add_metric([p, str(s), b], n)
        yield requests
        latency = HistogramMetricFamily(
            "zeitwork_lb_upstream_latency_seconds",
            "Time from sending the request upstream to the end of the response, by backend",
            labels=["backend"],
        )
        for b, counts in merged["latency"].items():
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, n in zip(self._bounds, counts, strict=False):
                cumulative += n
                buckets.append((repr(bound), cumulative))
            cumulative += counts[len(self._bounds)]
            buckets.append(("+Inf", cumulative))
            latency.add_metric([b], buckets, counts[-1])
        yield latency
        gauge = GaugeMetricFamily(
            "zeitwork_lb_open_connections", "Open client connections (all workers)"
        )
        gauge.add_metric([], merged["open_connections"])
        yield gauge
        transitions = CounterMetricFamily(
            "zeitwork_lb_health_transitions",
            "Backend availability changes, by backend, kind (active|passive) and direction",
            labels=["backend", "kind", "to"],
        )
        for b, k, t, n in merged["transitions"]:
            transitions.add_metric([b, k, t], n)
        yield transitions
        yield from self._route_families(merged["routes"])

    @staticmethod
    def _route_families(rows: route_stats.RouteRows) -> Iterator[Any]:
        requests = CounterMetricFamily(
            "zeitwork_lb_route_requests",
            "Requests answered per route (domain host; 'other' for the rest), by status class",
            labels=["route", "class"],
        )
        latency = HistogramMetricFamily(
            "zeitwork_lb_route_upstream_latency_seconds",
            "Time from sending the request upstream to the end of the response, per route",
            labels=["route"],
        )
        traffic = CounterMetricFamily(
            "zeitwork_lb_route_bytes",
            "Body bytes per route: in (request bodies) and out (response bodies)",
            labels=["route", "direction"],
        )
        for route in sorted(rows):
            row = rows[route]
            for cls, n in route_stats.classes(row):
                requests.add_metric([route, cls], n)
            buckets, total = route_stats.histogram(row)
            latency.add_metric([route], buckets, total)
            bytes_in, bytes_out = route_stats.traffic(row)
            traffic.add_metric([route, "in"], bytes_in)
            traffic.add_metric([route, "out"], bytes_out)
        yield requests
        yield latency
        yield traffic
