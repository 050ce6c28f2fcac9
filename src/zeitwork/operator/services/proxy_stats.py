"""Request figures per app from the load balancers' pushed totals.

Each balancer pushes its ``/stats/routes`` totals (since it started) every few seconds; the
store keeps about two minutes of them in PostgreSQL, so every operator sharing the database
answers the same. An app's figures over the last minute are computed here, purely:

- per balancer, the increase of each counter between consecutive samples; a new
  ``started_at`` means the balancer restarted, and the new totals are the increase (as
  Prometheus treats counter resets); a total that went down without one (one worker of
  several respawned) adds nothing;
- a balancer's rates are its increases over the time its samples span (its own clock); the
  app's rates are the sum over the balancers that pushed lately (``STALE_SECONDS``);
- the error rate is the 5xx share of the requests, p50 / p99 come from the summed latency
  histogram (linear within a bucket; past the last bound, the last bound).
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from zeitwork.operator.db.proxy_stats import ProxyStatsStore, StatsSample
from zeitwork.wire.proxy_stats import ProxyStatsPush

WINDOW_SECONDS = 60.0
STALE_SECONDS = 20.0
"""A balancer whose last sample is older than this no longer counts (it went away)."""

# a route's counters as one vector: requests, 5xx, bytes in, bytes out, latency buckets
_REQUESTS, _ERRORS, _IN, _OUT, _HIST = 0, 1, 2, 3, 4

Vector = list[float]


def route_vector(totals: dict[str, Any], buckets: int) -> Vector:
    """A route's totals (as ``/stats/routes`` sends them) as a counter vector."""
    counts = list(totals.get("latency", {}).get("counts", []))
    counts = (counts + [0] * buckets)[:buckets]
    return [
        float(totals.get("requests", 0)),
        float(totals.get("status", {}).get("5xx", 0)),
        float(totals.get("bytes_in", 0)),
        float(totals.get("bytes_out", 0)),
        *(float(n) for n in counts),
    ]


def increase(previous: Vector | None, current: Vector, *, restarted: bool) -> Vector:
    """What one route's counters added between two samples of one balancer.

    After a restart (a new ``started_at``) the totals began at zero: all of them are new.
    A total that went down without one is a worker of a multi-worker balancer that was
    respawned (the others' totals stayed): its loss is not knowable, so it adds nothing
    rather than counting everyone's totals again."""
    if previous is None or restarted:
        return list(current)
    return [max(c - p, 0.0) for c, p in zip(current, previous, strict=True)]


def quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of a histogram: ``counts`` per bucket, one per bound
    and a last one past it. None without observations."""
    total = sum(counts)
    if total <= 0 or not bounds:
        return None
    rank = q * total
    cumulative = 0.0
    for i, n in enumerate(counts):
        if n > 0 and cumulative + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * max(rank - cumulative, 0.0) / n
        cumulative += n
    return bounds[-1]


@dataclass(frozen=True, slots=True)
class BalancerIncrease:
    """One balancer's increases over the window, summed over the app's routes."""

    lb_id: str
    span: float
    """Seconds between its first and last sample (its clock)."""
    bounds: tuple[float, ...]
    added: Vector


def balancer_increase(
    samples: Sequence[StatsSample], hosts: Collection[str]
) -> BalancerIncrease | None:
    """Increases between consecutive samples of one balancer (ordered by ``at``), over the
    routes in ``hosts``; None unless two samples span some time."""
    if len(samples) < 2:
        return None
    first, last = samples[0], samples[-1]
    span = last.at - first.at
    if span <= 0:
        return None
    bounds = last.latency_bounds
    width = _HIST + len(bounds) + 1
    added = [0.0] * width
    for before, after in itertools.pairwise(samples):
        restarted = after.started_at != before.started_at or after.latency_bounds != bounds
        for host in hosts:
            totals = after.routes.get(host)
            if totals is None:
                continue
            current = route_vector(totals, len(bounds) + 1)
            old = before.routes.get(host)
            previous = None if old is None else route_vector(old, len(bounds) + 1)
            for i, x in enumerate(increase(previous, current, restarted=restarted)):
                added[i] += x
    return BalancerIncrease(lb_id=last.lb_id, span=span, bounds=bounds, added=added)


def app_metrics(
    samples: Iterable[StatsSample],
    hosts: Collection[str],
    *,
    now: float,
    window: float = WINDOW_SECONDS,
    stale: float = STALE_SECONDS,
) -> dict[str, Any] | None:
    """An app's figures over the last ``window`` seconds (``now`` and each sample's
    ``received`` on the database's clock); None when no balancer has two recent samples."""
    by_lb: dict[str, list[StatsSample]] = {}
    for sample in samples:
        if sample.received >= now - window:
            by_lb.setdefault(sample.lb_id, []).append(sample)
    balancers: list[BalancerIncrease] = []
    for listed in by_lb.values():
        listed.sort(key=lambda s: s.at)
        if listed[-1].received < now - stale:
            continue
        found = balancer_increase(listed, hosts)
        if found is not None:
            balancers.append(found)
    if not balancers:
        return None
    requests = sum(b.added[_REQUESTS] for b in balancers)
    errors = sum(b.added[_ERRORS] for b in balancers)
    # the histogram: balancers sharing the bounds most of the requests were counted with
    weight: dict[tuple[float, ...], float] = {}
    for b in balancers:
        weight[b.bounds] = weight.get(b.bounds, 0.0) + b.added[_REQUESTS]
    bounds = max(weight, key=lambda k: weight[k])
    counts = [0.0] * (len(bounds) + 1)
    for b in balancers:
        if b.bounds == bounds:
            for i, n in enumerate(b.added[_HIST:]):
                counts[i] += n
    p50 = quantile(0.5, bounds, counts)
    p99 = quantile(0.99, bounds, counts)
    return {
        "window_s": int(window),
        "requests_per_s": round(sum(b.added[_REQUESTS] / b.span for b in balancers), 3),
        "error_rate": round(errors / requests, 4) if requests > 0 else None,
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        "bytes_in_per_s": round(sum(b.added[_IN] / b.span for b in balancers), 1),
        "bytes_out_per_s": round(sum(b.added[_OUT] / b.span for b in balancers), 1),
        "load_balancers": len(balancers),
    }


class ProxyStatsService:
    """Stores pushed samples and answers an app's figures (I/O around the functions above)."""

    def __init__(self, *, store: ProxyStatsStore, window: float = WINDOW_SECONDS) -> None:
        self._store = store
        self._window = window

    async def record(self, push: ProxyStatsPush) -> None:
        stats = push.stats
        await self._store.insert(
            lb_id=push.lb_id,
            at=stats.at,
            started_at=stats.started_at,
            latency_bounds=stats.latency_bounds,
            # a route without traffic is left out: a missing route counts as zeros
            routes={
                host: totals.model_dump()
                for host, totals in stats.routes.items()
                if totals.requests or totals.bytes_in or totals.bytes_out
            },
        )

    async def app_metrics(self, hosts: Sequence[str]) -> dict[str, Any] | None:
        if not hosts:
            return None
        now, samples = await self._store.recent(hosts, seconds=self._window)
        return app_metrics(samples, hosts, now=now, window=self._window)
