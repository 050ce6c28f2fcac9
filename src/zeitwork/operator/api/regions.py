"""``/api/v1/regions`` (admin only): create, list, get, update, delete."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from zeitwork.operator.api.convert import region_out
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.pages import PageRequest
from zeitwork.operator.deps import Deps
from zeitwork.wire.admin import RegionCreate, RegionOut, RegionUpdate


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/regions", tags=["regions"], dependencies=[Depends(require(deps))])

    @api.post("", status_code=201)
    async def create_region(body: RegionCreate) -> RegionOut:
        region = await deps.regions.create(name=body.name, code=body.code, country=body.country)
        return region_out(region)

    @api.get("")
    async def list_regions(
        request: Request, response: Response, page: Annotated[PageRequest, Depends(page_params)]
    ) -> list[RegionOut]:
        result = await deps.regions.list_page(page)
        set_next_link(request, response, result)
        return [region_out(r) for r in result.items]

    @api.get("/{region_id}")
    async def get_region(region_id: uuid.UUID) -> RegionOut:
        return region_out(await deps.regions.get(region_id))

    @api.patch("/{region_id}")
    async def update_region(region_id: uuid.UUID, body: RegionUpdate) -> RegionOut:
        region = await deps.regions.update(region_id, name=body.name, country=body.country)
        return region_out(region)

    @api.delete("/{region_id}", status_code=204)
    async def delete_region(region_id: uuid.UUID) -> Response:
        await deps.regions.delete(region_id)
        return Response(status_code=204)

    return api
