"""``/api/v1/regions`` (admin only): create, list, get, update, delete."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from zeitwork.operator.api.models import RegionCreate, RegionOut, RegionUpdate
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.pages import PageRequest
from zeitwork.operator.deps import Deps


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/regions", tags=["regions"], dependencies=[Depends(require(deps))])

    @api.post("", status_code=201)
    async def create_region(body: RegionCreate) -> RegionOut:
        region = await deps.regions.create(name=body.name, code=body.code, country=body.country)
        return RegionOut.of(region)

    @api.get("")
    async def list_regions(
        request: Request, response: Response, page: Annotated[PageRequest, Depends(page_params)]
    ) -> list[RegionOut]:
        result = await deps.regions.list_page(page)
        set_next_link(request, response, result)
        return [RegionOut.of(r) for r in result.items]

    @api.get("/{region_id}")
    async def get_region(region_id: uuid.UUID) -> RegionOut:
        return RegionOut.of(await deps.regions.get(region_id))

    @api.patch("/{region_id}")
    async def update_region(region_id: uuid.UUID, body: RegionUpdate) -> RegionOut:
        region = await deps.regions.update(region_id, name=body.name, country=body.country)
        return RegionOut.of(region)

    @api.delete("/{region_id}", status_code=204)
    async def delete_region(region_id: uuid.UUID) -> Response:
        await deps.regions.delete(region_id)
        return Response(status_code=204)

    return api
