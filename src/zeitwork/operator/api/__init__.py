"""The operator's REST API under ``/api/v1``: handlers only, one module per resource.

To add a resource: write ``operator/api/<resource>.py`` with ``def router(deps: Deps) ->
APIRouter`` (handlers are closures over ``deps``; authenticate with
``security.require(deps, Scope.X)``; paginate with ``pagination``), then add the module to
``build_routers`` below. Stores and services go into ``Deps`` (``operator/deps.py``).
"""

from __future__ import annotations

from fastapi import APIRouter

from zeitwork.operator.deps import Deps

API_PREFIX = "/api/v1"


def build_routers(deps: Deps) -> list[APIRouter]:
    """One router per resource module; the app includes each at ``API_PREFIX``.

    (One level of inclusion, not a router of routers: FastAPI re-checks nested routers on
    every request, which cost about 20% of a single-row GET.)
    """
    from zeitwork.operator.api import (
        agents,
        builds,
        certificates,
        events,
        images,
        instances,
        logs,
        nodes,
        projects,
        proxies,
        regions,
        releases,
        routes,
        tokens,
        webhooks,
    )

    # one module per resource, in OpenAPI order
    modules = (
        nodes,
        agents,
        instances,
        images,
        projects,
        releases,
        builds,
        webhooks,
        routes,
        proxies,
        certificates,
        regions,
        tokens,
        events,
        logs,
    )
    return [module.router(deps) for module in modules]


def build_router(deps: Deps) -> APIRouter:
    """All resources under one router at ``API_PREFIX`` (for embedding elsewhere)."""
    root = APIRouter(prefix=API_PREFIX)
    for router in build_routers(deps):
        root.include_router(router)
    return root
