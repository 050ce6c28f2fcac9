"""Counts for the operator's domain gauges (refreshed when /metrics is scraped)."""

from __future__ import annotations

from dataclasses import dataclass, field

from zeitwork.operator.db.database import Conn, Database


@dataclass(frozen=True, slots=True)
class Counts:
    nodes: dict[str, int] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)


class StatsStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def counts(self, *, conn: Conn | None = None) -> Counts:
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT 'nodes', state, count(*) FROM nodes "
                "WHERE deleted_at IS NULL GROUP BY state "
                "UNION ALL SELECT 'instances', state, count(*) FROM instances "
                "WHERE deleted_at IS NULL GROUP BY state "
                "UNION ALL SELECT 'images', status, count(*) FROM images "
                "WHERE deleted_at IS NULL GROUP BY status"
            )
            rows = await cur.fetchall()
        counts = Counts()
        for kind, state, number in rows:
            getattr(counts, str(kind))[str(state)] = int(number)
        return counts
