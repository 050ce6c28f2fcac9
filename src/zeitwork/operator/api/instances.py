"""``/api/v1/instances``: list, create (scheduled or on a given node), get, state reports,
termination.

Environment variables may hold secrets: list answers show only their names
(``environment_variable_names``); the values appear in the answer to ``POST`` and to
``GET /{id}`` (admin only) and in the assignments of the instance's own node. They are
never logged.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from zeitwork.core.states import InstanceState
from zeitwork.operator.api.convert import instance_out
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.instances import InstanceRequest
from zeitwork.operator.db.pages import Page, PageRequest
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Principal, Scope
from zeitwork.operator.services.instances import status_update
from zeitwork.wire.admin import InstanceCreate, InstanceOut
from zeitwork.wire.agent import InstanceStatusReport
from zeitwork.wire.common import ResourcesModel


def spec_of(
    *,
    image_id: uuid.UUID,
    resources: ResourcesModel,
    default_port: int,
    environment_variables: dict[str, str],
    restart_policy: str = "always",
    deployment_id: uuid.UUID | None = None,
) -> InstanceRequest:
    return InstanceRequest(
        image_id=image_id,
        vcpu_millis=max(1, round(resources.vcpu * 1000)),
        memory_mib=resources.memory,
        default_port=default_port,
        environment_variables=dict(environment_variables),
        deployment_id=deployment_id,
        restart_policy=restart_policy,
    )


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/instances", tags=["instances"])
    admin = require(deps, Scope.ADMIN)
    reporter = require(deps, Scope.NODE)

    @api.get("", dependencies=[Depends(admin)], response_model=list[InstanceOut])
    async def list_instances(
        request: Request,
        *,
        page: Annotated[PageRequest, Depends(page_params)],
        state: Annotated[InstanceState | None, Query(description="only this state")] = None,
        node_id: Annotated[uuid.UUID | None, Query(description="only on this node")] = None,
        deployment_id: Annotated[
            uuid.UUID | None, Query(description="only of this deployment")
        ] = None,
        include_deleted: Annotated[
            bool, Query(description="also instances marked for termination")
        ] = False,
    ) -> Response:
        body, next_after = await deps.instances.list_page_json(
            page,
            state=state,
            node_id=node_id,
            deployment_id=deployment_id,
            include_deleted=include_deleted,
        )
        answer = Response(content=body, media_type="application/json")
        set_next_link(request, answer, Page(items=[], next_after=next_after))
        return answer

    @api.post("", status_code=201, dependencies=[Depends(admin)])
    async def create_instance(body: InstanceCreate) -> InstanceOut:
        spec = spec_of(
            image_id=body.image_id,
            resources=body.resources,
            default_port=body.default_port,
            environment_variables=body.environment_variables,
            restart_policy=body.restart_policy,
        )
        instance = await deps.instance_service.create(spec, node_id=body.node_id)
        return instance_out(instance, secrets=True)

    @api.get("/{instance_id}", dependencies=[Depends(admin)])
    async def get_instance(instance_id: uuid.UUID) -> InstanceOut:
        return instance_out(await deps.instances.get(instance_id), secrets=True)

    @api.put("/{instance_id}/state")
    async def report_state(
        instance_id: uuid.UUID,
        body: InstanceStatusReport,
        principal: Principal = Depends(reporter),  # noqa: B008 (a local: Annotated cannot see it)
    ) -> InstanceOut:
        update = status_update(body)
        # a node token always names its node; the nil id matches no instance
        node = None if principal.is_admin else (principal.node_id or uuid.UUID(int=0))
        instance = await deps.instance_service.report(instance_id, update, node_id=node)
        return instance_out(instance)

    @api.delete("/{instance_id}", status_code=202, dependencies=[Depends(admin)])
    async def delete_instance(instance_id: uuid.UUID) -> InstanceOut:
        return instance_out(await deps.instance_service.terminate(instance_id))

    return api
