"""The operator's REST API under ``/api/v1``: handlers only, one module per resource.

To add a resource: write ``operator/api/<resource>.py`` with ``def router(deps: Deps) ->
APIRouter`` (handlers are closures over ``deps``; authenticate with
``security.require(deps, Scope.X)``; paginate with ``pagination``), then add the module to
``build_router`` below. Stores and services go into ``Deps`` (``operator/deps.py``).
"""

from __future__ import annotations

from fastapi import APIRouter

from zeitwork.operator.deps import Deps

API_PREFIX = "/api/v1"


def build_router(deps: Deps) -> APIRouter:
    from zeitwork.operator.api import (
        agents,
        certificates,
        images,
        instances,
        nodes,
        projects,
        regions,
        routes,
        tokens,
    )

    root = APIRouter(prefix=API_PREFIX)
    # one module per resource, in OpenAPI order
    for module in (
        nodes,
        agents,
        instances,
        images,
        projects,
        routes,
        certificates,
        regions,
        tokens,
    ):
        root.include_router(module.router(deps))
    return root
