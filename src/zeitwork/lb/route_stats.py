"""Request figures per route (domain host): counts by status class, upstream latency
histogram, bytes in and out. Plain lists on the hot path; pure merge and views.

Labels are bounded: a request counts under its route's host only when that host is in the
route table (the router's ``route_hosts``); everything else (unknown hosts served by the
default pool, requests refused before routing) counts as ``other``, and past
``MAX_ROUTES`` distinct hosts new ones count as ``other`` too. Totals run since the worker
started; the operator samples ``GET /stats/routes`` and takes differences for rates
(a total that went down means a restart, as with Prometheus counters).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

from zeitwork.observability.metrics import LATENCY_BUCKETS

OTHER = "other"
MAX_ROUTES = 5000
CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

_BOUNDS = list(LATENCY_BUCKETS)
# one row per route: status classes, bytes in, bytes out, then the latency histogram
# (one count per bound, one for +Inf) and its sum
_IN = len(CLASSES)
_OUT = _IN + 1
_HIST = _OUT + 1
_SUM = _HIST + len(_BOUNDS) + 1
_WIDTH = _SUM + 1

RouteRows = dict[str, list[float]]


def status_class(status: int) -> int:
    """Index into ``CLASSES`` (anything outside 100-599 counts with the nearest class)."""
    return min(max(status // 100, 1), 5) - 1


class RouteStats:
    def __init__(self, *, max_routes: int = MAX_ROUTES) -> None:
        self.rows: RouteRows = {}
        self.max_routes = max_routes

    def record(
        self, route: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        row = self.rows.get(route)
        if row is None:
            if len(self.rows) >= self.max_routes:
                route = OTHER
                row = self.rows.get(route)
            if row is None:
                row = self.rows[route] = [0.0] * _WIDTH
        row[status_class(status)] += 1
        row[_IN] += bytes_in
        row[_OUT] += bytes_out
        if seconds > 0.0:
            row[_HIST + bisect.bisect_left(_BOUNDS, seconds)] += 1
            row[_SUM] += seconds

    def snapshot(self) -> RouteRows:
        return {route: list(row) for route, row in self.rows.items()}


def merge(snapshots: Iterable[RouteRows]) -> RouteRows:
    """Sum rows of several workers, route by route."""
    out: RouteRows = {}
    for snap in snapshots:
        for route, row in snap.items():
            have = out.get(route)
            if have is None:
                out[route] = list(row)
            else:
                out[route] = [x + y for x, y in zip(have, row, strict=True)]
    return out


def as_json(rows: RouteRows) -> dict[str, Any]:
    """The ``/stats/routes`` body's ``routes``: per host, totals since start."""
    out: dict[str, Any] = {}
    for route in sorted(rows):
        row = rows[route]
        counts = [int(n) for n in row[_HIST:_SUM]]
        out[route] = {
            "requests": int(sum(row[:_IN])),
            "status": {c: int(row[i]) for i, c in enumerate(CLASSES)},
            "bytes_in": int(row[_IN]),
            "bytes_out": int(row[_OUT]),
            "latency": {"counts": counts, "count": sum(counts), "sum": round(row[_SUM], 6)},
        }
    return out


def histogram(row: list[float]) -> tuple[list[tuple[str, float]], float]:
    """A row's latency as Prometheus cumulative buckets and their sum."""
    buckets: list[tuple[str, float]] = []
    cumulative = 0.0
    for i, bound in enumerate(_BOUNDS):
        cumulative += row[_HIST + i]
        buckets.append((repr(bound), cumulative))
    cumulative += row[_HIST + len(_BOUNDS)]
    buckets.append(("+Inf", cumulative))
    return buckets, row[_SUM]


def classes(row: list[float]) -> list[tuple[str, float]]:
    return [(c, row[i]) for i, c in enumerate(CLASSES)]


def traffic(row: list[float]) -> tuple[float, float]:
    """(bytes in, bytes out)."""
    return row[_IN], row[_OUT]


BOUNDS: tuple[float, ...] = tuple(_BOUNDS)
