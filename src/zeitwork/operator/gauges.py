"""Domain gauges (nodes by state, instances by state, images by status), refreshed from
the database whenever ``/metrics`` is scraped."""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, Gauge

from zeitwork.core.errors import ServiceUnavailable
from zeitwork.core.states import ImageState, InstanceState, NodeState
from zeitwork.operator.db.stats import StatsStore

log = structlog.get_logger("zeitwork.operator.metrics")


class DomainGauges:
    def __init__(self, *, registry: CollectorRegistry, stats: StatsStore) -> None:
        self._stats = stats
        self.nodes = Gauge(
            "nodes", "Nodes by state", ["state"], namespace="zeitwork", registry=registry
        )
        self.instances = Gauge(
            "instances", "Instances by state", ["state"], namespace="zeitwork", registry=registry
        )
        self.images = Gauge(
            "images", "Images by status", ["status"], namespace="zeitwork", registry=registry
        )

    async def refresh(self) -> None:
        try:
            counts = await self._stats.counts()
        except ServiceUnavailable:
            log.warning("metrics.refresh_failed", reason="database unavailable")
            return  # keep the last values; readiness reports the outage
        for gauge, states, values in (
            (self.nodes, NodeState, counts.nodes),
            (self.instances, InstanceState, counts.instances),
            (self.images, ImageState, counts.images),
        ):
            for state in states:
                gauge.labels(state.value).set(values.get(state.value, 0))
