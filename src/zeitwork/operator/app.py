"""The operator's FastAPI application, built from a ``Deps`` container."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from zeitwork import __version__
from zeitwork.operator.api import API_PREFIX, build_routers
from zeitwork.operator.console.inprocess import InProcessApi
from zeitwork.operator.console.routes import router as console_router
from zeitwork.operator.deps import Deps
from zeitwork.operator.gauges import DomainGauges
from zeitwork.webapi import install_common

IMAGE_IMPORT_PATH = f"{API_PREFIX}/images/import"
BUILD_CONTEXTS_PREFIX = f"{API_PREFIX}/build-contexts/"
BUILDER_PREFIX = f"{API_PREFIX}/builder/builds/"


def create_app(*, deps: Deps, registry: CollectorRegistry) -> FastAPI:
    app = FastAPI(
        title="Zeitwork operator",
        version=__version__,
        description="Control plane API of Zeitwork. Every /api/v1 route needs a bearer token.",
    )
    gauges = DomainGauges(registry=registry, stats=deps.stats)
    json_limit = deps.settings.json_max_bytes
    image_limit = deps.settings.image_max_bytes

    context_limit = deps.settings.build_context_max_bytes

    def body_limit(path: str) -> int:
        if path == IMAGE_IMPORT_PATH or (
            path.startswith(BUILDER_PREFIX) and path.endswith("/image")
        ):
            return image_limit
        if path.startswith(BUILD_CONTEXTS_PREFIX):
            return context_limit
        return json_limit

    install_common(
        app,
        service="operator",
        registry=registry,
        readiness=[("database", deps.db.ping)],
        body_limit=body_limit,
        before_metrics=gauges.refresh,
    )
    for router in build_routers(deps):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(console_router(deps=deps, api=InProcessApi(app=app)))
    _declare_bearer_auth(app)
    return app


def _declare_bearer_auth(app: FastAPI) -> None:
    """Declare ``Authorization: Bearer`` on every /api/v1 operation in /openapi.json."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "a Zeitwork API token (zw_...)",
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith(API_PREFIX):
                for operation in operations.values():
                    operation.setdefault("security", [{"bearer": []}])
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
