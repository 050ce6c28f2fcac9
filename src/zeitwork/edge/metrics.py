"""The edge's Prometheus metrics. Hot-path counts are plain ints read at scrape time.

With several workers each one publishes a snapshot of its counters every two seconds;
worker 0 (the admin listener) adds them to its own when scraped."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from zeitwork.core.files import atomic_write_text
from zeitwork.edge.policy import EdgePolicy
from zeitwork.edge.rate_limit import RateLimiter
from zeitwork.edge.tls_transport import HANDSHAKE_FAILURES, HandshakeCounter


@dataclass
class Snapshot:
    """The hot-path counters of one worker, mergeable across workers (plain JSON)."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    limited: int = 0
    evicted_live: int = 0
    entries: int = 0
    handshakes: int = 0
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    open_connections: int = 0
    refused: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "requests": [[h, s, c] for (h, s), c in self.requests.items()],
                "limited": self.limited,
                "evicted_live": self.evicted_live,
                "entries": self.entries,
                "handshakes": self.handshakes,
                "completed": self.completed,
                "failed": self.failed,
                "open_connections": self.open_connections,
                "refused": self.refused,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        return cls(
            requests={(str(h), int(s)): int(c) for h, s, c in data["requests"]},
            limited=int(data["limited"]),
            evicted_live=int(data["evicted_live"]),
            entries=int(data["entries"]),
            handshakes=int(data["handshakes"]),
            completed=int(data["completed"]),
            failed={str(k): int(v) for k, v in dict(data.get("failed", {})).items()},
            open_connections=int(data.get("open_connections", 0)),
            refused=int(data.get("refused", 0)),
        )

    def add(self, other: Snapshot) -> None:
        for key, count in other.requests.items():
            self.requests[key] = self.requests.get(key, 0) + count
        self.limited += other.limited
        self.evicted_live += other.evicted_live
        self.entries += other.entries
        self.handshakes += other.handshakes
        self.completed += other.completed
        for reason, count in other.failed.items():
            self.failed[reason] = self.failed.get(reason, 0) + count
        self.open_connections += other.open_connections
        self.refused += other.refused


class ConnectionCounts(Protocol):
    """What the connection caps count (``engine.ConnectionCaps``)."""

    open: int
    refused: int


def snapshot(
    policy: EdgePolicy,
    limiter: RateLimiter,
    handshakes: HandshakeCounter,
    caps: ConnectionCounts | None = None,
) -> Snapshot:
    return Snapshot(
        requests=dict(policy.requests),
        limited=limiter.limited,
        evicted_live=limiter.evicted_live,
        entries=len(limiter),
        handshakes=handshakes.started,
        completed=handshakes.completed,
        failed=dict(handshakes.failed),
        open_connections=caps.open if caps is not None else 0,
        refused=caps.refused if caps is not None else 0,
    )


def publish(directory: Path, index: int, snap: Snapshot) -> None:
    """Write one worker's snapshot atomically for worker 0 to merge."""
    # rewritten every second: a loss in a power cut costs nothing (the temp file,
    # .worker-N.json.*.tmp, is not matched by merged()'s glob)
    atomic_write_text(directory / f"worker-{index}.json", snap.to_json(), durable=False)


def merged(own: Snapshot, directory: Path | None, index: int) -> Snapshot:
    total = Snapshot()
    total.add(own)
    if directory is None:
        return total
    for path in sorted(directory.glob("worker-*.json")):
        if path.name == f"worker-{index}.json":
            continue
        try:
            total.add(Snapshot.from_json(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return total


class _EdgeCollector(Collector):
    def __init__(
        self,
        *,
        policy: EdgePolicy,
        limiter: RateLimiter,
        handshakes: HandshakeCounter,
        caps: ConnectionCounts | None,
        expiries: Callable[[], dict[str, datetime]],
        stats_dir: Path | None,
        index: int,
        failing: Callable[[], dict[str, int]],
    ) -> None:
        self._failing = failing
        self._caps = caps
        self._policy = policy
        self._limiter = limiter
        self._handshakes = handshakes
        self._expiries = expiries
        self._stats_dir = stats_dir
        self._index = index

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        snap = merged(
            snapshot(self._policy, self._limiter, self._handshakes, self._caps),
            self._stats_dir,
            self._index,
        )
        requests = CounterMetricFamily(
            "zeitwork_edge_requests",
            "Requests answered, by host and status",
            labels=["host", "status"],
        )
        for (host, status), count in sorted(snap.requests.items()):
            requests.add_metric([host, str(status)], count)
        yield requests
        yield CounterMetricFamily(
            "zeitwork_edge_rate_limited", "Requests refused with 429", value=snap.limited
        )
        yield CounterMetricFamily(
            "zeitwork_edge_rate_limit_live_evictions",
            "Live rate-limit entries evicted because the table was full",
            value=snap.evicted_live,
        )
        yield GaugeMetricFamily(
            "zeitwork_edge_rate_limit_entries",
            "Clients tracked by the rate limiters (all workers)",
            value=snap.entries,
        )
        yield GaugeMetricFamily(
            "zeitwork_edge_connections",
            "Client connections held under the connection caps, HTTPS ones from TCP accept "
            "(their handshake included)",
            value=snap.open_connections,
        )
        yield CounterMetricFamily(
            "zeitwork_edge_connections_refused",
            "Connections refused by EDGE_MAX_CONNECTIONS_PER_IP or EDGE_MAX_CONNECTIONS",
            value=snap.refused,
        )
        yield CounterMetricFamily(
            "zeitwork_edge_tls_handshakes", "TLS handshakes started", value=snap.handshakes
        )
        failures = CounterMetricFamily(
            "zeitwork_edge_tls_handshake_failures",
            "TLS handshakes that failed, by reason: error (refused version, unknown name, "
            "not TLS), timeout, closed (the peer went away first)",
            labels=["reason"],
        )
        for reason in sorted(set(HANDSHAKE_FAILURES) | set(snap.failed)):
            failures.add_metric([reason], snap.failed.get(reason, 0))
        yield failures
        yield GaugeMetricFamily(
            "zeitwork_edge_tls_handshakes_in_progress",
            "TLS handshakes started and not yet completed or failed",
            value=max(0, snap.handshakes - snap.completed - sum(snap.failed.values())),
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
        failing = GaugeMetricFamily(
            "zeitwork_edge_certificate_failed_attempts",
            "Failed orders in a row per domain (retried with back-off; 0 once issued)",
            labels=["domain"],
        )
        for domain, attempts in sorted(self._failing().items()):
            failing.add_metric([domain], attempts)
        yield failing


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
        caps: ConnectionCounts | None = None,
        expiries: Callable[[], dict[str, datetime]],
        stats_dir: Path | None = None,
        index: int = 0,
        failing: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.registry.register(
            _EdgeCollector(
                policy=policy,
                limiter=limiter,
                handshakes=handshakes,
                caps=caps,
                expiries=expiries,
                stats_dir=stats_dir,
                index=index,
                failing=failing,
            )
        )
