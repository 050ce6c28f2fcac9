"""Deployment creation: the deployment row and its replicas, placed spread across nodes,
in one transaction (all replicas or nothing). Rollouts and rollbacks are a later issue."""

from __future__ import annotations

import uuid

import structlog

from zeitwork.operator.db.database import Database
from zeitwork.operator.db.instances import Instance, InstanceRequest
from zeitwork.operator.db.projects import Deployment, ProjectStore
from zeitwork.operator.services.instances import InstanceService

log = structlog.get_logger("zeitwork.operator.deployments")


class DeploymentService:
    def __init__(
        self, *, db: Database, projects: ProjectStore, instance_service: InstanceService
    ) -> None:
        self._db = db
        self._projects = projects
        self._instances = instance_service

    async def create(
        self, *, project_id: uuid.UUID, spec: InstanceRequest, replicas: int
    ) -> tuple[Deployment, list[Instance]]:
        async with self._db.transaction() as tx:
            deployment = await self._projects.create_deployment(
                project_id=project_id,
                image_id=spec.image_id,
                replicas=replicas,
                default_port=spec.default_port,
                vcpu_millis=spec.vcpu_millis,
                memory_mib=spec.memory_mib,
                conn=tx,
            )
            placed: list[Instance] = []
            if replicas:
                bound = InstanceRequest(
                    image_id=spec.image_id,
                    vcpu_millis=spec.vcpu_millis,
                    memory_mib=spec.memory_mib,
                    default_port=spec.default_port,
                    environment_variables=spec.environment_variables,
                    deployment_id=deployment.id,
                    restart_policy=spec.restart_policy,
                )
                placed = await self._instances.create_replicas(bound, replicas, conn=tx)
        log.info(
            "deployment.created",
            deployment_id=str(deployment.id),
            project_id=str(project_id),
            replicas=replicas,
            nodes=sorted({str(i.node_id) for i in placed}),
        )
        return deployment, placed
