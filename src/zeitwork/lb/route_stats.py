"""Request figures per route (domain host): counts by status class, upstream latency
histogram, bytes in and out. Plain lists on the hot path; pure merge and views.

The hot path counts per pool, the name the engine reports; the views add pools up by the
route host each stands for (``router.route_of_pool``). Labels are bounded: pools exist only
for the routes of the table, so only hosts in the table get a label; everything else
(unknown hosts served by the default pool, requests refused before routing) counts as
``other``, and so does every pool past ``MAX_ROUTES``. Totals run since the worker
started; the operator samples ``GET /stats/routes`` and takes differences for rates
(a total that went down means a restart, as with Prometheus counters).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
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


def add(row: list[float], status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
    """Count one request into a route's row."""
    cls = status // 100 - 1
    row[cls if 0 <= cls < _IN else (0 if cls < 0 else _IN - 1)] += 1
    row[_IN] += bytes_in
    row[_OUT] += bytes_out
    if seconds > 0.0:
        row[_HIST + bisect.bisect_left(_BOUNDS, seconds)] += 1
        row[_SUM] += seconds


class RouteStats:
    def __init__(self, *, max_routes: int = MAX_ROUTES) -> None:
        self.rows: RouteRows = {}
        self.max_routes = max_routes

    def row(self, key: str) -> list[float]:
        """The row that counts ``key``'s requests (``other``'s past ``max_routes``)."""
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= self.max_routes:
                key = OTHER
                row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = [0.0] * _WIDTH
        return row

    def record(self, key: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        add(self.row(key), status, seconds, bytes_in, bytes_out)

    def snapshot(self) -> RouteRows:
        return {key: list(row) for key, row in self.rows.items()}

    def by_route(self, route_of: Callable[[str], str | None]) -> RouteRows:
        """Rows added up by route: ``route_of(key)`` names a key's route, None is ``other``."""
        return merge({route_of(k) or OTHER: r} for k, r in self.rows.items())


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
