"""The edge's Prometheus metrics. Hot-path counts are plain ints read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from zeitwork.edge.policy import EdgePolicy
from zeitwork.edge.rate_limit import RateLimiter


class HandshakeCounter:
    """TLS connections accepted (handshake started) and handshakes completed."""

    __slots__ = ("completed", "started")

    def __init__(self) -> None:
        self.started = 0
        self.completed = 0


class _EdgeCollector(Collector):
    def __init__(
        self,
        *,
        policy: EdgePolicy,
        limiter: RateLimiter,
        handshakes: HandshakeCounter,
        expiries: Callable[[], dict[str, datetime]],
    ) -> None:
        self._policy = policy
        self._limiter = limiter
        self._handshakes = handshakes
        self._expiries = expiries

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "zeitwork_edge_requests",
            "Requests answered, by host and status",
            labels=["host", "status"],
        )
        for (host, status), count in sorted(self._policy.requests.items()):
            requests.add_metric([host, str(status)], count)
        yield requests
        yield CounterMetricFamily(
            "zeitwork_edge_rate_limited", "Requests refused with 429", value=self._limiter.limited
        )
        yield CounterMetricFamily(
            "zeitwork_edge_rate_limit_live_evictions",
            "Live rate-limit entries evicted because the table was full",
            value=self._limiter.evicted_live,
        )
        yield GaugeMetricFamily(
            "zeitwork_edge_rate_limit_entries",
            "Clients tracked by the rate limiter",
            value=len(self._limiter),
        )
        started, completed = self._handshakes.started, self._handshakes.completed
        yield CounterMetricFamily(
            "zeitwork_edge_tls_handshakes", "TLS handshakes started", value=started
        )
        yield CounterMetricFamily(
            "zeitwork_edge_tls_handshake_failures",
            "TLS handshakes that did not complete (refused version, bad SNI, timeout; "
            "includes the few in progress at scrape time)",
            value=max(0, started - completed),
        )
        expiry = GaugeMetricFamily(
            "zeitwork_edge_certificate_expiry_seconds",
            "Seconds until each served certificate expires",
            labels=["domain"],
        )
        now = datetime.now(UTC)
        for domain, not_after in sorted(self._expiries().items()):
            expiry.add_metric([domain], (not_after - now).total_seconds())
        yield expiry


class EdgeMetrics:
    def __init__(self, *, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.certificate_orders = Counter(
            "zeitwork_edge_certificate_orders",
            "Certificate orders by source and result",
            ["source", "result"],
            registry=registry,
        )

    def watch(
        self,
        *,
        policy: EdgePolicy,
        limiter: RateLimiter,
        handshakes: HandshakeCounter,
        expiries: Callable[[], dict[str, datetime]],
    ) -> None:
        self.registry.register(
            _EdgeCollector(
                policy=policy,
                limiter=limiter,
                handshakes=handshakes,
                expiries=expiries,
            )
        )
