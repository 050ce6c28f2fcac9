"""Apps' releases on ``/api/v1/projects/{project}/...`` (admin): deploy, history, one
release with its rollout, rollback, scale, status and environment variables. The routes
and their rules are listed in ``zeitwork.wire.releases``; ``{project}`` is an id or a slug.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from zeitwork.operator.api.security import require
from zeitwork.operator.db.releases import Release, Rollout
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.wire.common import ResourcesModel
from zeitwork.wire.health import HealthCheck, HealthResult
from zeitwork.wire.releases import (
    ENVIRONMENT_PATTERN,
    AppStatus,
    EnvChange,
    EnvOut,
    InstanceBrief,
    ReleaseCreate,
    ReleaseOut,
    RollbackRequest,
    RolloutOut,
    RolloutStrategy,
    ScaleRequest,
)

ProjectRef = Annotated[
    str, Path(min_length=1, max_length=200, description="the project's id or slug")
]
EnvironmentName = Annotated[
    str, Query(pattern=ENVIRONMENT_PATTERN, description="the environment (default production)")
]


def rollout_out(rollout: Rollout) -> RolloutOut:
    return RolloutOut(
        id=rollout.id,
        release_id=rollout.release_id,
        from_release_id=rollout.from_release_id,
        strategy=rollout.strategy,  # type: ignore[arg-type]  # CHECK-constrained column
        state=rollout.state,
        deadline_at=rollout.deadline_at,
        finished_at=rollout.finished_at,
        error=rollout.error,
        created_at=rollout.created_at,
    )


def release_out(
    release: Release, *, environment: str, current: bool, rollout: Rollout | None = None
) -> ReleaseOut:
    return ReleaseOut(
        id=release.id,
        project_id=release.project_id,
        environment=environment,
        version=release.version,
        image_id=release.image_id,
        image_digest=release.image_digest,
        image_ref=release.image_ref,
        command=release.command,
        port=release.port,
        backend_protocol=release.backend_protocol,  # type: ignore[arg-type]  # CHECK-constrained
        response_idle_timeout=release.response_idle_timeout,
        tunnel_idle_timeout=release.tunnel_idle_timeout,
        max_tunnels=release.max_tunnels,
        env=dict(release.env),
        secret_names=sorted(release.secrets),
        resources=ResourcesModel.model_construct(
            vcpu=release.vcpu_millis / 1000, memory=release.memory_mib
        ),
        replicas=release.replicas,
        health_check=HealthCheck.model_validate(release.health_check),
        restart_policy=release.restart_policy,  # type: ignore[arg-type]  # CHECK-constrained
        strategy=RolloutStrategy.model_validate(release.strategy),
        reason=release.reason,  # type: ignore[arg-type]  # CHECK-constrained column
        description=release.description,
        created_by=release.created_by,
        source_release_id=release.source_release_id,
        state=release.state,
        state_changed_at=release.state_changed_at,
        error=release.error,
        current=current,
        created_at=release.created_at,
        rollout=None if rollout is None else rollout_out(rollout),
    )


def router(deps: Deps) -> APIRouter:
    admin = require(deps, Scope.ADMIN)
    api = APIRouter(prefix="/projects", tags=["releases"], dependencies=[Depends(admin)])
    service = deps.release_service
    store = deps.releases

    async def _out(release: Release, environment: str) -> ReleaseOut:
        env = await store.environment_by_id(release.project_environment_id)
        return release_out(
            release,
            environment=environment,
            current=env.current_release_id == release.id,
            rollout=await store.rollout_of(release.id),
        )

    @api.post("/{project}/releases", status_code=201)
    async def deploy(project: ProjectRef, body: ReleaseCreate) -> ReleaseOut:
        """Deploy: a new release of the environment, rolled out by the operator (follow it
        with ``GET /events?rollout_id=...&follow=true``)."""
        done = await service.deploy(project, body)
        return await _out(done.release, body.environment)

    @api.get("/{project}/releases")
    async def list_releases(
        project: ProjectRef,
        environment: EnvironmentName = "production",
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        before: Annotated[
            int | None, Query(ge=1, le=2_147_483_647, description="versions below this one")
        ] = None,
    ) -> list[ReleaseOut]:
        """The history, newest first."""
        _project, env = await service.locate(project, environment)
        history = await store.history(env.id, limit=limit, before=before)
        return [
            release_out(r, environment=environment, current=r.id == env.current_release_id)
            for r in history
        ]

    @api.get("/{project}/releases/{version}")
    async def get_release(
        project: ProjectRef,
        version: Annotated[int, Path(ge=1, le=2_147_483_647)],
        environment: EnvironmentName = "production",
    ) -> ReleaseOut:
        _project, env = await service.locate(project, environment)
        return await _out(await store.by_version(env.id, version), environment)

    @api.post("/{project}/rollback", status_code=201)
    async def rollback(project: ProjectRef, body: RollbackRequest) -> ReleaseOut:
        """A new release made from vN (default: the previous release that served)."""
        done = await service.rollback(project, body)
        return await _out(done.release, body.environment)

    @api.put("/{project}/scale")
    async def scale(project: ProjectRef, body: ScaleRequest) -> AppStatus:
        """The environment's replica count (no new release; scaling down drains first)."""
        await service.scale(project, body.environment, body.replicas)
        return await _status(project, body.environment)

    @api.get("/{project}/status")
    async def status(project: ProjectRef, environment: EnvironmentName = "production") -> AppStatus:
        return await _status(project, environment)

    @api.get("/{project}/env")
    async def get_env(project: ProjectRef, environment: EnvironmentName = "production") -> EnvOut:
        """The current release's variables; secrets by name only."""
        env, secret_names = await service.env(project, environment)
        return EnvOut(environment=environment, env=env, secret_names=secret_names)

    @api.patch("/{project}/env", status_code=201)
    async def change_env(project: ProjectRef, body: EnvChange) -> ReleaseOut:
        """Set, unset or add secrets: one new release (reason ``config``), rolled out."""
        done = await service.change_env(project, body)
        return await _out(done.release, body.environment)

    async def _status(project_ref: str, environment: str) -> AppStatus:
        project, env = await service.locate(project_ref, environment)
        current = (
            None if env.current_release_id is None else await store.get(env.current_release_id)
        )
        rollout = await store.running_rollout(env.id)
        versions = {r.id: r.version for r in await store.history(env.id, limit=1000)}
        instances = await store.instances_of(env.id)
        domains = await store.domains_of(env.id)
        return AppStatus(
            project_id=project.id,
            name=project.name,
            slug=project.slug,
            environment=environment,
            replicas=env.replicas,
            current_release=None
            if current is None
            else release_out(
                current,
                environment=environment,
                current=True,
                rollout=await store.rollout_of(current.id),
            ),
            rollout=None if rollout is None else rollout_out(rollout),
            instances=[
                InstanceBrief(
                    id=i.id,
                    node_id=i.node_id,
                    release_id=i.release_id,
                    version=versions.get(i.release_id) if i.release_id else None,
                    state=i.state,
                    desired_state=i.desired_state,
                    health=i.health,
                    last_check=_result(i.health_detail),
                    serving=i.serving,
                    draining=i.drain_started_at is not None,
                    ip_address=i.ip_address,
                    port=i.port,
                    exit_code=i.exit_code,
                    reason=i.reason,
                    state_changed_at=i.state_changed_at,
                )
                for i in instances
            ],
            domains=domains,
            metrics=await deps.proxy_stats.app_metrics(domains),
        )

    return api


def _result(detail: dict[str, object] | None) -> HealthResult | None:
    if not detail:
        return None
    try:
        return HealthResult.model_validate(detail)
    except ValueError:
        return None
