"""``/api/v1/nodes``: list, register (idempotent), get, delete, change state."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import TypeAdapter

from zeitwork.core.errors import PermissionDenied
from zeitwork.core.states import NodeState
from zeitwork.operator.api.convert import node_out
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.nodes import NodeSpec
from zeitwork.operator.db.pages import PageRequest
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Principal, Scope
from zeitwork.wire.admin import NodeOut, NodeRegisteredOut, NodeStateChange
from zeitwork.wire.agent import NodeRegistration

_NODE_LIST = TypeAdapter(list[NodeOut])


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/nodes", tags=["nodes"])
    admin = require(deps, Scope.ADMIN)
    # a join token registers a node; a node token registers its own node again (an agent
    # restarting with its stored credential, when the join token is long revoked)
    joiner = require(deps, Scope.JOIN, Scope.NODE)
    reader = require(deps, Scope.NODE)

    @api.get("", dependencies=[Depends(admin)], response_model=list[NodeOut])
    async def list_nodes(
        request: Request,
        page: Annotated[PageRequest, Depends(page_params)],
        state: Annotated[NodeState | None, Query(description="only nodes in this state")] = None,
    ) -> Response:
        result = await deps.nodes.list_page(page, state=state)
        # serialised in one pass (the rows are ours and valid; no per-item re-validation)
        body = _NODE_LIST.dump_json([node_out(n) for n in result.items])
        answer = Response(content=body, media_type="application/json")
        set_next_link(request, answer, result)
        return answer

    @api.post(
        "",
        status_code=201,
        responses={200: {"model": NodeRegisteredOut, "description": "already registered"}},
    )
    async def register_node(
        body: NodeRegistration,
        response: Response,
        principal: Principal = Depends(joiner),  # noqa: B008 (a local: Annotated cannot see it)
    ) -> NodeRegisteredOut:
        if principal.scope is Scope.NODE and (body.id is None or body.id != principal.node_id):
            raise PermissionDenied("a node token may only register its own node (by its id)")
        spec = NodeSpec(
            id=body.id,
            hostname=body.hostname.strip().lower(),
            ip_address=body.ip_address,
            region_id=body.region_id,
            runtime=body.runtime,
            vcpu_millis=round(body.resources.vcpu * 1000),
            memory_mib=body.resources.memory,
            disk_mib=body.disk or 0,
            subnet=body.subnet,
            agent_url=body.agent_url.rstrip("/") if body.agent_url else None,
            agent_token=body.agent_token,
        )
        done = await deps.node_service.register(spec, issue_token=principal.scope is Scope.JOIN)
        if not done.created:
            response.status_code = 200
        out = node_out(done.node)
        return NodeRegisteredOut(
            **out.model_dump(),
            node_id=done.node.id,
            node_token=done.node_token,
        )

    @api.get("/{node_id}")
    async def get_node(
        node_id: uuid.UUID,
        principal: Principal = Depends(reader),  # noqa: B008 (a local: Annotated cannot see it)
    ) -> NodeOut:
        if not principal.may_act_for_node(node_id):
            raise PermissionDenied("a node token may only read its own node")
        return node_out(await deps.nodes.get(node_id))

    @api.delete("/{node_id}", status_code=204, dependencies=[Depends(admin)])
    async def delete_node(node_id: uuid.UUID) -> Response:
        await deps.node_service.delete(node_id)
        return Response(status_code=204)

    @api.put("/{node_id}/state", dependencies=[Depends(admin)])
    async def set_node_state(node_id: uuid.UUID, body: NodeStateChange) -> NodeOut:
        node = await deps.node_service.set_state(node_id, body.state, expected=body.expected_state)
        return node_out(node)

    @api.post("/{node_id}/drain", dependencies=[Depends(admin)])
    async def drain_node(node_id: uuid.UUID) -> NodeOut:
        """No new instances here; each release instance on it is replaced elsewhere (the
        replacement serves first), then drained and stopped."""
        return node_out(await deps.node_service.drain(node_id))

    @api.post("/{node_id}/undrain", dependencies=[Depends(admin)])
    async def undrain_node(node_id: uuid.UUID) -> NodeOut:
        """A draining node takes instances again (409 when it is neither draining nor
        ready)."""
        return node_out(await deps.node_service.drain(node_id, draining=False))

    return api
