"""Prometheus metrics: one registry per service process, built by the composition root."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class HttpMetrics:
    """Request counts and latency by route template and status, for API services."""

    def __init__(self, *, registry: CollectorRegistry, namespace: str = "zeitwork") -> None:
        self.requests = Counter(
            "http_requests",
            "HTTP requests handled, by method, route template and status",
            ["method", "route", "status"],
            namespace=namespace,
            registry=registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            namespace=namespace,
            registry=registry,
            buckets=LATENCY_BUCKETS,
        )

    def observe(self, *, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
