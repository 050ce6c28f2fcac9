"""``POST /api/v1/proxies/stats``: load balancers push their request totals per route.

The body is ``zeitwork.wire.proxy_stats.ProxyStatsPush`` (the balancer's id and its
``GET /stats/routes``); ``proxy`` tokens only. The operator keeps about two minutes of
samples in PostgreSQL and ``GET /projects/{project}/status`` reads an app's figures from them.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from zeitwork.operator.api.security import require
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.wire.proxy_stats import ProxyStatsPush


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/proxies", tags=["proxies"])
    proxy = require(deps, Scope.PROXY)

    @api.post("/stats", status_code=204, dependencies=[Depends(proxy)])
    async def push_stats(body: ProxyStatsPush) -> Response:
        """One snapshot of a balancer's totals since it started (it pushes every few s)."""
        await deps.proxy_stats.record(body)
        return Response(status_code=204)

    return api
