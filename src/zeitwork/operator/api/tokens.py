"""``/api/v1/tokens`` (admin only): create (secret shown once), list, get, revoke."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from zeitwork.core.errors import InvalidInput
from zeitwork.operator.api.convert import token_out
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.pages import PageRequest
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.wire.admin import TokenCreate, TokenCreated, TokenOut


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/tokens", tags=["tokens"], dependencies=[Depends(require(deps))])

    @api.post("", status_code=201)
    async def create_token(body: TokenCreate) -> TokenCreated:
        if (body.scope is Scope.NODE) != (body.node_id is not None):
            raise InvalidInput("node_id is required for scope 'node' and only allowed there")
        if body.node_id is not None:
            await deps.nodes.get(body.node_id)  # 404 for an unknown node
        token, secret = await deps.token_service.issue(
            body.scope, name=body.name, node_id=body.node_id, expires_in=body.expires_in
        )
        return TokenCreated(**token_out(token).model_dump(), token=secret)

    @api.get("")
    async def list_tokens(
        request: Request,
        response: Response,
        page: Annotated[PageRequest, Depends(page_params)],
        scope: Annotated[Scope | None, Query()] = None,
        include_revoked: Annotated[bool, Query()] = False,
    ) -> list[TokenOut]:
        result = await deps.tokens.list_page(page, scope=scope, include_revoked=include_revoked)
        set_next_link(request, response, result)
        return [token_out(t) for t in result.items]

    @api.get("/{token_id}")
    async def get_token(token_id: uuid.UUID) -> TokenOut:
        return token_out(await deps.tokens.get(token_id))

    @api.delete("/{token_id}", status_code=204)
    async def revoke_token(token_id: uuid.UUID) -> Response:
        await deps.token_service.revoke(token_id)
        return Response(status_code=204)

    return api
