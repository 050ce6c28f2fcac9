"""The route table's rows, read in one snapshot with its version."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from zeitwork.operator.db import changes
from zeitwork.operator.db.database import Conn, Database

SERVING_NODE_STATES = "('ready', 'draining')"
"""Node states whose running instances the route table advertises (an SQL list)."""


@dataclass(frozen=True, slots=True)
class DomainBinding:
    host: str
    deployment_id: uuid.UUID
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    verified: bool = False
    edge_policy: dict[str, Any] | None = None
    path_rate_limits: list[dict[str, Any]] | None = None


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
        that is not marked for termination and whose node serves (``ready`` or
        ``draining``: a draining node keeps serving what it runs until it is moved off;
        a ``down``, ``error``, ``unknown``, ``booting`` or ``terminated`` node's instances
        are not advertised), with the ``routes`` version of that snapshot (node state
        changes bump it, migration 0004)."""
        async with self._db.connection(conn) as c, c.transaction():
            await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            version = await changes.version(c, changes.ROUTES)
            cur = await c.execute(
                "SELECT name, deployment_id, rate_limit_rps, rate_limit_burst, verified, "
                "edge_policy, path_rate_limits "
                "FROM domains "
                "WHERE deleted_at IS NULL AND deployment_id IS NOT NULL ORDER BY name"
            )
            domains = [
                DomainBinding(
                    host=r[0],
                    deployment_id=r[1],
                    rate_limit_rps=r[2],
                    rate_limit_burst=r[3],
                    verified=r[4],
                    edge_policy=r[5],
                    path_rate_limits=r[6],
                )
                for r in await cur.fetchall()
            ]
            cur = await c.execute(
                "SELECT i.id, i.deployment_id, i.ip_address, coalesce(i.port, i.default_port) "
                "FROM instances i JOIN nodes n ON n.id = i.node_id "
                "WHERE i.state = 'running' AND i.deleted_at IS NULL "
                "AND i.ip_address IS NOT NULL "
                f"AND n.state IN {SERVING_NODE_STATES} AND n.deleted_at IS NULL "
                "ORDER BY i.id"
            )
            instances = [
                RunningInstance(id=r[0], deployment_id=r[1], ip_address=r[2], port=r[3])
                for r in await cur.fetchall()
            ]
        return RouteRows(version=version, domains=domains, instances=instances)
