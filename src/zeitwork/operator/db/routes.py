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
    """A live domain bound to an environment (its current release serves it) or, for rows
    from before releases, to a deployment."""

    host: str
    deployment_id: uuid.UUID | None
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    verified: bool = False
    edge_policy: dict[str, Any] | None = None
    path_rate_limits: list[dict[str, Any]] | None = None
    project_environment_id: uuid.UUID | None = None
    release_id: uuid.UUID | None = None
    """the environment's current release"""
    health_check: dict[str, Any] | None = None
    """the current release's check"""
    release_port: int | None = None
    response_idle_timeout: float | None = None
    """the current release's per-route limits (migration 0017; None: not set)"""
    tunnel_idle_timeout: float | None = None
    max_tunnels: int | None = None


@dataclass(frozen=True, slots=True)
class RunningInstance:
    id: uuid.UUID
    deployment_id: uuid.UUID | None
    ip_address: str
    port: int
    project_environment_id: uuid.UUID | None = None
    release_id: uuid.UUID | None = None
    routable: bool = False
    """in its environment's route: serving, running and healthy"""
    backend_protocol: str = "http1"
    """its release's (``http1`` for an instance of no release)"""
    draining: bool = False
    """out of its route until its release's ``drain_timeout`` ends (``drain_started_at``)"""


@dataclass(frozen=True, slots=True)
class RouteRows:
    version: int
    domains: list[DomainBinding]
    instances: list[RunningInstance]


class RouteStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def rows(self, *, conn: Conn | None = None) -> RouteRows:
        """Live domains bound to an environment (with its current release's id and health
        check) or to a deployment, and every running instance with an address
        that is not marked for termination and whose node serves (``ready`` or
        ``draining``: a draining node keeps serving what it runs until it is moved off;
        a ``down``, ``error``, ``unknown``, ``booting`` or ``terminated`` node's instances
        are not advertised), with the ``routes`` version of that snapshot (node state
        changes bump it, migration 0004)."""
        async with self._db.connection(conn) as c, c.transaction():
            await c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            version = await changes.version(c, changes.ROUTES)
            cur = await c.execute(
                "SELECT d.name, d.deployment_id, d.rate_limit_rps, d.rate_limit_burst, "
                "d.verified, d.edge_policy, d.path_rate_limits, d.project_environment_id, "
                "e.current_release_id, r.health_check, r.port, r.response_idle_timeout, "
                "r.tunnel_idle_timeout, r.max_tunnels "
                "FROM domains d "
                "LEFT JOIN project_environments e ON e.id = d.project_environment_id "
                "AND e.deleted_at IS NULL "
                "LEFT JOIN releases r ON r.id = e.current_release_id "
                "WHERE d.deleted_at IS NULL "
                "AND (d.deployment_id IS NOT NULL OR e.id IS NOT NULL) ORDER BY d.name"
            )
            domains = [
                DomainBinding(
                    host=r[0],
                    deployment_id=None if r[7] is not None else r[1],
                    rate_limit_rps=r[2],
                    rate_limit_burst=r[3],
                    verified=r[4],
                    edge_policy=r[5],
                    path_rate_limits=r[6],
                    project_environment_id=r[7],
                    release_id=r[8],
                    health_check=r[9],
                    release_port=r[10],
                    response_idle_timeout=r[11],
                    tunnel_idle_timeout=r[12],
                    max_tunnels=r[13],
                )
                for r in await cur.fetchall()
            ]
            cur = await c.execute(
                "SELECT i.id, i.deployment_id, i.ip_address, coalesce(i.port, i.default_port), "
                "r.project_environment_id, i.release_id, "
                "(i.serving AND i.health = 'healthy') AS routable, "
                "coalesce(r.backend_protocol, 'http1'), "
                "(i.drain_started_at IS NOT NULL AND NOT i.serving) AS draining "
                "FROM instances i JOIN nodes n ON n.id = i.node_id "
                "LEFT JOIN releases r ON r.id = i.release_id "
                "WHERE i.state = 'running' AND i.deleted_at IS NULL "
                "AND i.ip_address IS NOT NULL "
                f"AND n.state IN {SERVING_NODE_STATES} AND n.deleted_at IS NULL "
                "ORDER BY i.id"
            )
            instances = [
                RunningInstance(
                    id=r[0],
                    deployment_id=r[1],
                    ip_address=r[2],
                    port=r[3],
                    project_environment_id=r[4],
                    release_id=r[5],
                    routable=bool(r[6]),
                    backend_protocol=r[7],
                    draining=bool(r[8]),
                )
                for r in await cur.fetchall()
            ]
        return RouteRows(version=version, domains=domains, instances=instances)
