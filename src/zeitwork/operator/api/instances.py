"""``/api/v1/instances``: list, create (scheduled or on a given node), get, state reports,
termination.

Environment variables may hold secrets: list answers show only their names
(``environment_variable_names``); the values appear in the answer to ``POST`` and to
``GET /{id}`` (admin only) and in the assignments of the instance's own node. They are
never logged.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from zeitwork.core.states import InstanceState
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.instances import Instance, InstanceRequest
from zeitwork.operator.db.pages import Page, PageRequest
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Principal, Scope
from zeitwork.operator.services.instances import status_update
from zeitwork.wire.agent import InstanceStatusReport, RestartPolicy
from zeitwork.wire.common import ResourcesModel

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
MAX_ENV_VARS = 200
MAX_ENV_VALUE = 32 * 1024


def check_environment(env: dict[str, str]) -> dict[str, str]:
    """Names like shell variables, at most 200 of them, values up to 32 KiB, no NUL."""
    if len(env) > MAX_ENV_VARS:
        raise ValueError(f"at most {MAX_ENV_VARS} environment variables")
    for name, value in env.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if len(value) > MAX_ENV_VALUE or "\x00" in value:
            raise ValueError(f"the value of {name} is longer than 32 KiB or holds a NUL byte")
    return env


class InstanceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image_id: uuid.UUID
    resources: ResourcesModel
    default_port: int = Field(ge=1, le=65535, description="the port the app listens on")
    environment_variables: dict[str, str] = Field(default_factory=dict)
    node_id: uuid.UUID | None = Field(
        default=None, description="run on this node (capacity still checked); else scheduled"
    )
    restart_policy: RestartPolicy = "always"

    @field_validator("environment_variables")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)


class InstanceOut(BaseModel):
    id: uuid.UUID
    node_id: uuid.UUID | None
    image_id: uuid.UUID
    deployment_id: uuid.UUID | None
    state: InstanceState
    desired_state: Literal["running", "stopped", "terminated"]
    state_changed_at: datetime
    resources: ResourcesModel
    default_port: int
    restart_policy: str
    ip_address: str | None
    port: int | None
    exit_code: int | None
    oom_killed: bool
    reason: str | None
    log_tail: list[str]
    environment_variable_names: list[str]
    environment_variables: dict[str, str] | None = Field(
        default=None, description="values only in single-instance answers (may be secrets)"
    )
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @classmethod
    def of(cls, i: Instance, *, secrets: bool = False) -> InstanceOut:
        # rows from our own database are valid already: construct without re-validating
        return cls.model_construct(
            id=i.id,
            node_id=i.node_id,
            image_id=i.image_id,
            deployment_id=i.deployment_id,
            state=i.state,
            desired_state=i.desired_state,
            state_changed_at=i.state_changed_at,
            resources=ResourcesModel.model_construct(
                vcpu=i.vcpu_millis / 1000, memory=i.memory_mib
            ),
            default_port=i.default_port,
            restart_policy=i.restart_policy,
            ip_address=i.ip_address,
            port=i.port,
            exit_code=i.exit_code,
            oom_killed=i.oom_killed,
            reason=i.reason,
            log_tail=list(i.log_tail),
            environment_variable_names=sorted(i.environment_variables),
            environment_variables=dict(i.environment_variables) if secrets else None,
            created_at=i.created_at,
            updated_at=i.updated_at,
            deleted_at=i.deleted_at,
        )


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
        return InstanceOut.of(instance, secrets=True)

    @api.get("/{instance_id}", dependencies=[Depends(admin)])
    async def get_instance(instance_id: uuid.UUID) -> InstanceOut:
        return InstanceOut.of(await deps.instances.get(instance_id), secrets=True)

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
        return InstanceOut.of(instance)

    @api.delete("/{instance_id}", status_code=202, dependencies=[Depends(admin)])
    async def delete_instance(instance_id: uuid.UUID) -> InstanceOut:
        return InstanceOut.of(await deps.instance_service.terminate(instance_id))

    return api
