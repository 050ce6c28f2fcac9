"""Events: what the platform did and saw, one row each, ordered by ``seq``.

``record`` is called inside the transaction of the change it describes (so an event exists
exactly when its change committed) and bumps the ``events`` topic, which wakes followers
(``changes.wait`` / long-polls compare versions; NOTIFY is only a wake-up).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from zeitwork.operator.db import changes
from zeitwork.operator.db.database import Conn, Database

EVENTS = "events"
"""The change topic bumped with every recorded event."""

Level = Literal["info", "warning", "error"]
_MESSAGE_MAX = 4000

_COLUMNS = (
    "seq, id, created_at, project_id, project_environment_id, release_id, rollout_id, "
    "instance_id, node_id, kind, level, message, data"
)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    id: uuid.UUID
    created_at: datetime
    project_id: uuid.UUID | None
    project_environment_id: uuid.UUID | None
    release_id: uuid.UUID | None
    rollout_id: uuid.UUID | None
    instance_id: uuid.UUID | None
    node_id: uuid.UUID | None
    kind: str
    level: Level
    message: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventFilter:
    project_id: uuid.UUID | None = None
    project_environment_id: uuid.UUID | None = None
    release_id: uuid.UUID | None = None
    rollout_id: uuid.UUID | None = None
    instance_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = None
    kind_prefix: str | None = None


async def record(
    conn: Conn,
    kind: str,
    message: str,
    *,
    level: Level = "info",
    project_id: uuid.UUID | None = None,
    project_environment_id: uuid.UUID | None = None,
    release_id: uuid.UUID | None = None,
    rollout_id: uuid.UUID | None = None,
    instance_id: uuid.UUID | None = None,
    node_id: uuid.UUID | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    """Insert one event in ``conn``'s transaction; returns its ``seq``. ``kind`` is a
    dotted name (``release.created``, ``instance.unhealthy``, ``node.down``)."""
    cur = await conn.execute(
        "INSERT INTO events (project_id, project_environment_id, release_id, rollout_id, "
        "instance_id, node_id, kind, level, message, data) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq",
        (
            project_id,
            project_environment_id,
            release_id,
            rollout_id,
            instance_id,
            node_id,
            kind,
            level,
            message[:_MESSAGE_MAX],
            Jsonb(data or {}),
        ),
    )
    row = await cur.fetchone()
    assert row is not None  # INSERT ... RETURNING always returns the row
    await changes.bump(conn, EVENTS)
    return int(row[0])


class EventStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def after(
        self,
        after_seq: int,
        *,
        where: EventFilter = EventFilter(),  # frozen: safe to share as a default
        limit: int = 100,
        conn: Conn | None = None,
    ) -> list[Event]:
        """Events with ``seq > after_seq`` matching ``where``, oldest first."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > %(after)s AND deleted_at IS NULL "
                "AND (%(project)s::uuid IS NULL OR project_id = %(project)s::uuid) "
                "AND (%(env)s::uuid IS NULL OR project_environment_id = %(env)s::uuid) "
                "AND (%(release)s::uuid IS NULL OR release_id = %(release)s::uuid) "
                "AND (%(rollout)s::uuid IS NULL OR rollout_id = %(rollout)s::uuid) "
                "AND (%(instance)s::uuid IS NULL OR instance_id = %(instance)s::uuid) "
                "AND (%(node)s::uuid IS NULL OR node_id = %(node)s::uuid) "
                "AND (%(kind)s::text IS NULL OR kind LIKE %(kind)s::text || '%%') "
                "ORDER BY seq LIMIT %(limit)s",
                {
                    "after": after_seq,
                    "project": where.project_id,
                    "env": where.project_environment_id,
                    "release": where.release_id,
                    "rollout": where.rollout_id,
                    "instance": where.instance_id,
                    "node": where.node_id,
                    "kind": where.kind_prefix,
                    "limit": limit,
                },
            )
            rows = await cur.fetchall()
        return [Event(**row) for row in rows]

    async def last_seq(self, *, conn: Conn | None = None) -> int:
        async with self._db.connection(conn) as c:
            cur = await c.execute("SELECT coalesce(max(seq), 0) FROM events")
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def prune(
        self, *, max_age_seconds: float, max_count: int, conn: Conn | None = None
    ) -> int:
        """Delete events older than ``max_age_seconds`` and beyond the newest
        ``max_count``; returns how many went."""
        async with self._db.transaction(conn) as c:
            cur = await c.execute(
                "DELETE FROM events WHERE created_at < now() - make_interval(secs => %s) "
                "OR seq <= (SELECT coalesce(max(seq), 0) FROM events) - %s",
                (max_age_seconds, max_count),
            )
            return cur.rowcount
