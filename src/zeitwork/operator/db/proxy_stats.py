"""Samples of the load balancers' request totals per route (``proxy_stats``).

Each push is one row; every insert also deletes the rows older than ``RETENTION_SECONDS``
(of every balancer, so one that went away leaves no rows behind). Reads pick the routes
asked for out of each sample's JSON in PostgreSQL, so a status request moves only its own
app's figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from zeitwork.operator.db.database import Conn, Database

RETENTION_SECONDS = 130.0
"""About two minutes: the one-minute window, its baseline and some slack."""


@dataclass(frozen=True, slots=True)
class StatsSample:
    lb_id: str
    received: float
    """When the operator stored it (unix seconds, the database's clock)."""
    at: float
    """When the balancer read its totals (its own clock)."""
    started_at: float
    latency_bounds: tuple[float, ...]
    routes: dict[str, dict[str, Any]]
    """Route host -> the totals as the balancer sent them (validated on the way in)."""


class ProxyStatsStore:
    def __init__(self, *, db: Database, retention_seconds: float = RETENTION_SECONDS) -> None:
        self._db = db
        self._retention = retention_seconds

    async def insert(
        self,
        *,
        lb_id: str,
        at: float,
        started_at: float,
        latency_bounds: Sequence[float],
        routes: dict[str, Any],
        conn: Conn | None = None,
    ) -> None:
        """Store one sample (a repeated ``(lb_id, at)`` is ignored) and expire old ones."""
        async with self._db.transaction(conn) as c:
            await c.execute(
                "INSERT INTO proxy_stats (lb_id, at, started_at, latency_bounds, routes) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (lb_id, at) DO NOTHING",
                (lb_id, at, started_at, Jsonb(list(latency_bounds)), Jsonb(routes)),
            )
            await c.execute(
                "DELETE FROM proxy_stats WHERE created_at < now() - make_interval(secs => %s)",
                (self._retention,),
            )

    async def recent(
        self, hosts: Sequence[str], *, seconds: float, conn: Conn | None = None
    ) -> tuple[float, list[StatsSample]]:
        """The database's clock now and the samples stored in the last ``seconds``, each
        with only the routes in ``hosts`` (ordered by balancer, then time)."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT extract(epoch FROM now())::float8, lb_id, "
                "extract(epoch FROM created_at)::float8, at, started_at, latency_bounds, "
                # key lookups, not a walk over every route of the sample
                "(SELECT coalesce(jsonb_object_agg(h, routes -> h), '{}'::jsonb) "
                " FROM unnest(%s::text[]) AS h WHERE routes ? h) "
                "FROM proxy_stats WHERE created_at >= now() - make_interval(secs => %s) "
                "ORDER BY lb_id, at",
                (list(hosts), seconds),
            )
            rows = await cur.fetchall()
            if not rows:
                cur = await c.execute("SELECT extract(epoch FROM now())::float8")
                row = await cur.fetchone()
                return (float(row[0]) if row else 0.0), []
        samples = [
            StatsSample(
                lb_id=str(lb_id),
                received=float(received),
                at=float(at),
                started_at=float(started_at),
                latency_bounds=tuple(float(b) for b in bounds),
                routes=dict(routes),
            )
            for _now, lb_id, received, at, started_at, bounds, routes in rows
        ]
        return float(rows[0][0]), samples
