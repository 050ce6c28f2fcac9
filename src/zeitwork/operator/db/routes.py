"""The route table's rows, read in one snapshot with its version."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from zeitwork.operator.db import changes
from zeitwork.operator.db.database import Conn, Database


@dataclass(frozen=True, slots=True)
class DomainBinding:
    host: str
    deployment_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class RunningInstance:
    id: uuid.UUID
    deployment_id: uuid.UUID | None
    ip_address: str
    port: int


@dataclass(frozen=True, slots=True)
class RouteRows:
    version: int
    domains: list[DomainBinding]
    instances: list[RunningInstance]


class RouteStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def rows(self, *, conn: Conn | None = None) -> RouteRows:
        """Live domains bound to a deployment, and every running instance with an address
        that is not marked for termination, with the ``routes`` version of that snapshot."""
        async with self._db.connection(conn) as c, c.transaction():
            await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            version = await changes.version(c, changes.ROUTES)
            cur = await c.execute(
                "SELECT name, deployment_id FROM domains WHERE deleted_at IS NULL "
                "AND deployment_id IS NOT NULL ORDER BY name"
            )
            domains = [DomainBinding(host=r[0], deployment_id=r[1]) for r in await cur.fetchall()]
            cur = await c.execute(
                "SELECT id, deployment_id, ip_address, coalesce(port, default_port) "
                "FROM instances WHERE state = 'running' AND deleted_at IS NULL "
                "AND ip_address IS NOT NULL ORDER BY id"
            )
            instances = [
                RunningInstance(id=r[0], deployment_id=r[1], ip_address=r[2], port=r[3])
                for r in await cur.fetchall()
            ]
        return RouteRows(version=version, domains=domains, instances=instances)
