"""What node agents call besides registration: heartbeats and the assignments long-poll
(``zeitwork.wire.agent``). A node token acts only for its own node; admins for any."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from zeitwork.core.errors import PermissionDenied
from zeitwork.operator.api.security import require
from zeitwork.operator.db import changes
from zeitwork.operator.db.instances import AssignedRow
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Principal, Scope
from zeitwork.operator.secret_box import SecretBox
from zeitwork.operator.services.watch import MAX_WAIT_SECONDS
from zeitwork.wire.agent import AssignedInstance, Assignments, Heartbeat, ImageRef, Peer
from zeitwork.wire.common import ResourcesModel
from zeitwork.wire.health import HealthCheck


def _own_node(principal: Principal, node_id: uuid.UUID) -> None:
    if not principal.may_act_for_node(node_id):
        raise PermissionDenied("a node token may only act for its own node")


def _environment(row: AssignedRow, box: SecretBox) -> dict[str, str]:
    """The instance's variables with its release's secrets opened (only the agent that
    runs it ever sees the plaintexts)."""
    env = dict(row.instance.environment_variables)
    for name, sealed in (row.secrets or {}).items():
        env[name] = box.open(sealed)
    return env


def _check(raw: dict[str, Any] | None) -> HealthCheck | None:
    return None if raw is None else HealthCheck.model_validate(raw)


def router(deps: Deps) -> APIRouter:
    api = APIRouter(prefix="/nodes", tags=["nodes"])
    node_or_admin = require(deps, Scope.NODE)

    @api.post("/{node_id}/heartbeat", status_code=204)
    async def heartbeat(
        node_id: uuid.UUID,
        body: Heartbeat,
        principal: Principal = Depends(node_or_admin),  # noqa: B008 (a local: Annotated cannot see it)
    ) -> Response:
        _own_node(principal, node_id)
        await deps.nodes.record_heartbeat(
            node_id, body.model_dump(mode="json"), runtime=body.runtime
        )
        if body.instances:
            await deps.instance_service.reconcile(node_id, body.instances)
        return Response(status_code=204)

    @api.get("/{node_id}/assignments")
    async def assignments(
        node_id: uuid.UUID,
        version: Annotated[
            int | None, Query(ge=0, description="the version the agent has; wait for another")
        ] = None,
        wait: Annotated[
            float, Query(ge=0, le=MAX_WAIT_SECONDS, description="seconds to wait for a change")
        ] = 0.0,
        principal: Principal = Depends(node_or_admin),  # noqa: B008 (a local: Annotated cannot see it)
    ) -> Assignments:
        _own_node(principal, node_id)
        await deps.nodes.get(node_id)  # 404 for an unknown node
        topics = (changes.assignments_topic(node_id), changes.PEERS)
        await deps.watcher.wait_change(topics, version, wait)
        # two snapshots, each consistent with its own version; their sum is the answer's
        peers_version, peers = await deps.nodes.peers(node_id)
        current, rows = await deps.instances.assignments(node_id)
        return Assignments(
            node_id=node_id,
            version=current + peers_version,
            peers=[
                Peer(node_id=p.node_id, subnet=p.subnet, ip_address=p.ip_address) for p in peers
            ],
            instances=[
                AssignedInstance(
                    id=r.instance.id,
                    desired_state=r.instance.desired_state,
                    image=ImageRef(
                        id=r.instance.image_id,
                        name=r.image_name,
                        digest=str(r.image_digest),  # ready images have one (CHECK)
                        size=r.image_size or 0,
                    ),
                    resources=ResourcesModel.model_construct(
                        vcpu=r.instance.vcpu_millis / 1000, memory=r.instance.memory_mib
                    ),
                    default_port=r.instance.default_port,
                    environment_variables=_environment(r, deps.secret_box),
                    restart_policy=r.instance.restart_policy,
                    deployment_id=r.instance.deployment_id,
                    release_id=r.instance.release_id,
                    command=r.instance.command,
                    health_check=_check(r.instance.health_check),
                    stop_timeout=r.instance.stop_timeout,
                )
                for r in rows
            ],
        )

    return api
