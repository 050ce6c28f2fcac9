"""``GET /api/v1/routes``: the route table of load balancers and edges (long-poll).

A route is a live domain bound to an app environment or (rows from before releases) to a
deployment. An environment's backends are its instances that are in the route (``serving``),
``running`` and ``healthy`` on a serving node, whatever their release (during a rollout old
and new ones serve side by side); the route carries the current release's id, health
check and per-route limits (response and tunnel idle timeouts, tunnel count: migration
0017). A deployment's backends are its running instances (``ip_address:port``).

A domain with path rate limits has one more route per path
prefix (same backends, that prefix's limit), after its ``/`` route. ``default_backends`` are
all running instances but the draining ones: a draining instance is out of every pool, so a
balancer drains it at once (its WebSockets get 1001 after ``LB_TUNNEL_DRAIN_TIMEOUT``)
rather than when the instance is stopped. The version changes whenever a domain binding or
a running instance (state, address) changes.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import ValidationError

from zeitwork.operator.api.security import require
from zeitwork.operator.db import changes
from zeitwork.operator.db.routes import RouteRows, RunningInstance
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.operator.services.watch import MAX_WAIT_SECONDS
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import EdgePolicyOverride, PathRateLimit, Route, RouteBackend, RouteTable


def _check(raw: dict[str, Any] | None) -> HealthCheck | None:
    if raw is None:
        return None
    try:
        return HealthCheck.model_validate(raw)
    except ValidationError:  # stored by this operator, validated then; never fail the table
        return None


def _backend(instance: RunningInstance) -> RouteBackend | None:
    """The instance as a backend; None when its address is not an IP address (load
    balancers refuse a table with a bad backend; reports are checked, older rows may not)."""
    try:
        address = ipaddress.ip_address(instance.ip_address)
    except ValueError:
        return None
    host = f"[{address}]" if address.version == 6 else str(address)
    return RouteBackend(
        instance_id=instance.id,
        address=f"{host}:{instance.port}",
        release_id=instance.release_id,
        protocol="h2c" if instance.backend_protocol == "h2c" else "http1",
    )


def route_table(rows: RouteRows) -> RouteTable:
    """Pure: rows of one snapshot -> the wire table."""
    by_deployment: dict[object, list[RouteBackend]] = {}
    by_environment: dict[object, list[RouteBackend]] = {}
    backends: list[RouteBackend] = []
    for instance in rows.instances:
        backend = _backend(instance)
        if backend is None:
            continue
        if not instance.draining:
            backends.append(backend)
        if instance.deployment_id is not None:
            by_deployment.setdefault(instance.deployment_id, []).append(backend)
        if instance.project_environment_id is not None and instance.routable:
            by_environment.setdefault(instance.project_environment_id, []).append(backend)
    routes: list[Route] = []
    for d in rows.domains:
        if d.project_environment_id is not None:
            listed = by_environment.get(d.project_environment_id, [])
        else:
            listed = by_deployment.get(d.deployment_id, [])
        route = Route(
            host=d.host,
            deployment_id=d.deployment_id,
            project_environment_id=d.project_environment_id,
            release_id=d.release_id,
            health_check=_check(d.health_check),
            backends=listed,
            rate_limit_rps=d.rate_limit_rps,
            rate_limit_burst=d.rate_limit_burst,
            verified=d.verified,
            policy=EdgePolicyOverride.model_validate(d.edge_policy) if d.edge_policy else None,
            response_idle_timeout=d.response_idle_timeout,
            tunnel_idle_timeout=d.tunnel_idle_timeout,
            max_tunnels=d.max_tunnels,
        )
        routes.append(route)
        for raw in d.path_rate_limits or ():
            limit = PathRateLimit.model_validate(raw)
            routes.append(
                route.model_copy(
                    update={
                        "path_prefix": limit.path_prefix,
                        "rate_limit_rps": limit.rps,
                        "rate_limit_burst": limit.burst,
                    }
                )
            )
    return RouteTable(version=rows.version, routes=routes, default_backends=backends)


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/routes", tags=["routes"])
    proxy = require(deps, Scope.PROXY)

    @api.get("", dependencies=[Depends(proxy)])
    async def get_routes(
        version: Annotated[
            int | None, Query(ge=0, description="the version the caller has; wait for another")
        ] = None,
        wait: Annotated[
            float, Query(ge=0, le=MAX_WAIT_SECONDS, description="seconds to wait for a change")
        ] = 0.0,
    ) -> RouteTable:
        await deps.watcher.wait_change(changes.ROUTES, version, wait)
        return route_table(await deps.routes.rows())

    return api
