"""Wire models of projects, nodes, domains, releases, status and events as an operator would
send them, for the CLI's unit tests: each factory takes only what a test cares about."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from zeitwork.core.states import HealthState, InstanceState, NodeState, ReleaseState, RolloutState
from zeitwork.wire.admin import DomainOut, NodeOut, ProjectOut
from zeitwork.wire.common import ResourcesModel
from zeitwork.wire.health import HealthCheck, HealthResult
from zeitwork.wire.releases import (
    AppStatus,
    EventOut,
    InstanceBrief,
    ReleaseOut,
    RolloutOut,
    RolloutStrategy,
)

PROJECT_ID = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
NODE_A = uuid.UUID("aaaaaaaa-0000-4000-8000-000000000001")
NODE_B = uuid.UUID("bbbbbbbb-0000-4000-8000-000000000002")
T0 = datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)


def rid(n: int) -> uuid.UUID:
    return uuid.UUID(f"{n:08x}-0000-4000-8000-{n:012x}")


def project(name: str, project_id: uuid.UUID = PROJECT_ID) -> ProjectOut:
    return ProjectOut(
        id=project_id,
        name=name,
        slug=name,
        github_repo=None,
        default_branch="main",
        created_at=T0,
        updated_at=T0,
    )


def node(hostname: str, node_id: uuid.UUID = NODE_A) -> NodeOut:
    return NodeOut(
        id=node_id,
        hostname=hostname,
        ip_address="10.1.0.1",
        region_id=None,
        state=NodeState.READY,
        state_changed_at=T0,
        runtime="oci",
        resources=ResourcesModel(vcpu=2, memory=2048),
        disk=0,
        last_heartbeat_at=T0,
        heartbeat=None,
        created_at=T0,
        updated_at=T0,
    )


def domain(name: str, **fields: Any) -> DomainOut:
    values: dict[str, Any] = {
        "id": uuid.uuid5(uuid.NAMESPACE_DNS, name),
        "name": name,
        "project_id": PROJECT_ID,
        "deployment_id": None,
        "verified": False,
        "verified_at": None,
        "created_at": T0,
        "updated_at": T0,
    }
    return DomainOut.model_validate(values | fields)


def rollout(
    n: int, state: RolloutState = RolloutState.RUNNING, error: str | None = None
) -> RolloutOut:
    return RolloutOut(
        id=rid(1000 + n),
        release_id=rid(100 + n),
        from_release_id=rid(100 + n - 1) if n > 1 else None,
        strategy="rolling",
        state=state,
        deadline_at=T0,
        finished_at=None,
        error=error,
        created_at=T0,
    )


def release(
    version: int,
    state: ReleaseState = ReleaseState.DEPLOYING,
    *,
    current: bool = False,
    error: str | None = None,
    with_rollout: RolloutState | None = RolloutState.RUNNING,
    reason: str = "deploy",
    source: int | None = None,
    image_ref: str | None = None,
    **extra: Any,
) -> ReleaseOut:
    fields: dict[str, Any] = {
        "id": rid(100 + version),
        "project_id": PROJECT_ID,
        "environment": "production",
        "version": version,
        "image_id": rid(500 + version),
        "image_digest": "sha256:" + f"{version:02d}" * 32,
        "image_ref": image_ref,
        "command": None,
        "port": 8080,
        "env": {},
        "secret_names": [],
        "resources": ResourcesModel(vcpu=0.25, memory=128),
        "replicas": 2,
        "health_check": HealthCheck(),
        "restart_policy": "always",
        "strategy": RolloutStrategy(),
        "reason": reason,
        "description": None,
        "created_by": None,
        "source_release_id": rid(100 + source) if source else None,
        "state": state,
        "state_changed_at": T0,
        "error": error,
        "current": current,
        "created_at": T0,
        "rollout": rollout(version, with_rollout, error) if with_rollout else None,
    }
    fields.update(extra)
    return ReleaseOut(**fields)


def instance(
    n: int,
    version: int,
    state: InstanceState = InstanceState.RUNNING,
    *,
    health: HealthState = HealthState.UNKNOWN,
    serving: bool = False,
    draining: bool = False,
    node: uuid.UUID = NODE_A,
    check: HealthResult | None = None,
    exit_code: int | None = None,
    reason: str | None = None,
) -> InstanceBrief:
    return InstanceBrief(
        id=rid(n),
        node_id=node,
        release_id=rid(100 + version),
        version=version,
        state=state,
        desired_state="running",
        health=health,
        last_check=check,
        serving=serving,
        draining=draining,
        ip_address=f"10.0.0.{n}",
        port=8080,
        exit_code=exit_code,
        reason=reason,
        state_changed_at=T0,
    )


def status(
    instances: list[InstanceBrief],
    current: ReleaseOut | None = None,
    *,
    running: RolloutOut | None = None,
    domains: tuple[str, ...] = (),
    metrics: dict[str, Any] | None = None,
    replicas: int = 2,
) -> AppStatus:
    return AppStatus(
        project_id=PROJECT_ID,
        name="web",
        slug="web",
        environment="production",
        replicas=replicas,
        current_release=current,
        rollout=running,
        instances=instances,
        domains=list(domains),
        metrics=metrics,
    )


def event(
    seq: int,
    kind: str,
    message: str,
    *,
    instance_n: int | None = None,
    level: str = "info",
    version: int | None = None,
    node: uuid.UUID | None = None,
    release_v: int | None = None,
    rollout_v: int | None = None,
    at: datetime = T0,
) -> EventOut:
    return EventOut(
        seq=seq,
        id=rid(9000 + seq),
        created_at=at,
        project_id=PROJECT_ID,
        project_environment_id=None,
        release_id=rid(100 + release_v) if release_v else None,
        rollout_id=rid(1000 + rollout_v) if rollout_v else None,
        instance_id=rid(instance_n) if instance_n is not None else None,
        node_id=node,
        kind=kind,
        level=level,  # type: ignore[arg-type]
        message=message,
        data={"version": version} if version is not None else {},
    )
