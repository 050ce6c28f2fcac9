"""What users name, resolved: an app (project) by id or slug, an environment by name, a
release by version; an app's instances with their node and release (the log sources); and
where a followed event stream starts when it asks for the newest events first."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from zeitwork.core.errors import NotFound
from zeitwork.core.states import InstanceState
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.events import EventFilter


@dataclass(frozen=True, slots=True)
class AppRef:
    id: uuid.UUID
    slug: str


@dataclass(frozen=True, slots=True)
class LogSource:
    """One instance of an app whose output lives on ``node_id``'s agent."""

    instance_id: uuid.UUID
    node_id: uuid.UUID
    release_id: uuid.UUID | None
    version: int | None
    state: InstanceState
    created_at: datetime
    state_changed_at: datetime


_EVENT_WHERE = (
    "deleted_at IS NULL "
    "AND (%(project)s::uuid IS NULL OR project_id = %(project)s::uuid) "
    "AND (%(env)s::uuid IS NULL OR project_environment_id = %(env)s::uuid) "
    "AND (%(release)s::uuid IS NULL OR release_id = %(release)s::uuid) "
    "AND (%(rollout)s::uuid IS NULL OR rollout_id = %(rollout)s::uuid) "
    "AND (%(instance)s::uuid IS NULL OR instance_id = %(instance)s::uuid) "
    "AND (%(node)s::uuid IS NULL OR node_id = %(node)s::uuid) "
    "AND (%(kind)s::text IS NULL OR kind LIKE %(kind)s::text || '%%')"
)


def _event_params(where: EventFilter) -> dict[str, Any]:
    return {
        "project": where.project_id,
        "env": where.project_environment_id,
        "release": where.release_id,
        "rollout": where.rollout_id,
        "instance": where.instance_id,
        "node": where.node_id,
        "kind": where.kind_prefix,
    }


class AppRefs:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def project(self, ref: str, *, conn: Conn | None = None) -> AppRef:
        """The live project whose id or slug is ``ref``; NotFound otherwise."""
        text = ref.strip()
        try:
            as_id: uuid.UUID | None = uuid.UUID(text)
        except ValueError:
            as_id = None
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT id, slug FROM projects WHERE deleted_at IS NULL "
                "AND (id = %s::uuid OR slug = %s) ORDER BY (id = %s::uuid) DESC LIMIT 1",
                (as_id, text.lower(), as_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"app {text[:100]!r} does not exist")
        return AppRef(id=row[0], slug=row[1])

    async def environment(
        self, project_id: uuid.UUID, name: str, *, conn: Conn | None = None
    ) -> uuid.UUID:
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT id FROM project_environments WHERE project_id = %s AND name = %s "
                "AND deleted_at IS NULL",
                (project_id, name),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"the app has no environment {name[:100]!r}")
        return uuid.UUID(str(row[0]))

    async def release(
        self, environment_id: uuid.UUID, version: int, *, conn: Conn | None = None
    ) -> uuid.UUID:
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT id FROM releases WHERE project_environment_id = %s AND version = %s "
                "AND deleted_at IS NULL",
                (environment_id, version),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"the environment has no release v{version}")
        return uuid.UUID(str(row[0]))

    async def log_sources(
        self,
        project_id: uuid.UUID,
        *,
        environment_id: uuid.UUID | None,
        version: int | None = None,
        instance_id: uuid.UUID | None = None,
        conn: Conn | None = None,
    ) -> list[LogSource]:
        """The app's instances that are placed and not terminated, oldest first."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT i.id, i.node_id, i.release_id, r.version, i.state, i.created_at, "
                "i.state_changed_at "
                "FROM instances i "
                "LEFT JOIN releases r ON r.id = i.release_id "
                "LEFT JOIN deployments d ON d.id = i.deployment_id "
                "WHERE i.deleted_at IS NULL AND i.node_id IS NOT NULL "
                "AND i.state <> 'terminated' "
                "AND coalesce(r.project_id, d.project_id) = %(project)s "
                # instances of deployments made before environments belong to every one
                "AND (%(env)s::uuid IS NULL OR coalesce(r.project_environment_id, "
                "d.project_environment_id, %(env)s::uuid) = %(env)s::uuid) "
                "AND (%(version)s::integer IS NULL OR r.version = %(version)s::integer) "
                "AND (%(instance)s::uuid IS NULL OR i.id = %(instance)s::uuid) "
                "ORDER BY i.created_at, i.id",
                {
                    "project": project_id,
                    "env": environment_id,
                    "version": version,
                    "instance": instance_id,
                },
            )
            rows = await cur.fetchall()
        return [
            LogSource(
                instance_id=r[0],
                node_id=r[1],
                release_id=r[2],
                version=r[3],
                state=InstanceState(r[4]),
                created_at=r[5],
                state_changed_at=r[6],
            )
            for r in rows
        ]

    async def instance_of(
        self, project_id: uuid.UUID, instance_id: uuid.UUID, *, conn: Conn | None = None
    ) -> None:
        """NotFound unless ``instance_id`` is (or was) an instance of the project."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT 1 FROM instances i LEFT JOIN releases r ON r.id = i.release_id "
                "LEFT JOIN deployments d ON d.id = i.deployment_id "
                "WHERE i.id = %s AND coalesce(r.project_id, d.project_id) = %s",
                (instance_id, project_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"instance {instance_id} is not an instance of this app")

    async def events_start(
        self, where: EventFilter, newest: int, *, conn: Conn | None = None
    ) -> int:
        """The ``seq`` after which the newest ``newest`` events matching ``where`` begin."""
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "SELECT coalesce(min(seq) - 1, (SELECT coalesce(max(seq), 0) FROM events)) "
                f"FROM (SELECT seq FROM events WHERE {_EVENT_WHERE} "
                "ORDER BY seq DESC LIMIT %(newest)s) AS newest",
                {**_event_params(where), "newest": newest},
            )
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])
