"""The operator's rows as the admin API's answers (``zeitwork.wire.admin``).

Rows from our own database are valid already: nodes and instances, which list answers hold
by the hundred, are constructed without re-validating them; the others validate as usual.
"""

from __future__ import annotations

import uuid
from typing import Any

from zeitwork.operator.db.images import Image, RegistryCredential
from zeitwork.operator.db.instances import Instance
from zeitwork.operator.db.nodes import Node
from zeitwork.operator.db.projects import Deployment, Domain, Project
from zeitwork.operator.db.regions import Region
from zeitwork.operator.db.tokens import Token
from zeitwork.operator.services.domains import record_name
from zeitwork.operator.services.images import location_of
from zeitwork.wire.admin import (
    DeploymentOut,
    DnsRecord,
    DomainOut,
    ImageConfigOut,
    ImageOut,
    InstanceOut,
    NodeHeartbeatOut,
    NodeOut,
    ProjectOut,
    RegionOut,
    RegistryCredentialOut,
    TokenOut,
)
from zeitwork.wire.common import ResourcesModel
from zeitwork.wire.routes import EdgePolicyOverride, PathRateLimit


def project_out(p: Project) -> ProjectOut:
    return ProjectOut(
        id=p.id,
        name=p.name,
        slug=p.slug,
        github_repo=p.github_repo,
        default_branch=p.default_branch,
        created_at=p.created_at,
        updated_at=p.updated_at,
    )


def domain_out(d: Domain) -> DomainOut:
    token = d.verification_token
    return DomainOut(
        verification_record=(
            DnsRecord(name=record_name(d.name), value=token) if token and not d.verified else None
        ),
        id=d.id,
        name=d.name,
        project_id=d.project_id,
        deployment_id=d.deployment_id,
        project_environment_id=d.project_environment_id,
        verified=d.verified,
        verified_at=d.verified_at,
        rate_limit_rps=d.rate_limit_rps,
        rate_limit_burst=d.rate_limit_burst,
        edge_policy=EdgePolicyOverride.model_validate(d.edge_policy) if d.edge_policy else None,
        path_rate_limits=[PathRateLimit.model_validate(x) for x in d.path_rate_limits or ()],
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


def deployment_out(d: Deployment, instance_ids: list[uuid.UUID] | None = None) -> DeploymentOut:
    resources = (
        ResourcesModel.model_construct(vcpu=d.vcpu_millis / 1000, memory=d.memory_mib)
        if d.vcpu_millis and d.memory_mib
        else None
    )
    return DeploymentOut(
        id=d.id,
        project_id=d.project_id,
        image_id=d.image_id,
        state=d.state,
        state_changed_at=d.state_changed_at,
        replicas=d.replicas,
        port=d.default_port,
        resources=resources,
        error=d.error,
        instance_ids=instance_ids,
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


def instance_out(i: Instance, *, secrets: bool = False) -> InstanceOut:
    """``secrets``: with the environment's values (single-instance answers to admins)."""
    return InstanceOut.model_construct(
        id=i.id,
        node_id=i.node_id,
        image_id=i.image_id,
        deployment_id=i.deployment_id,
        state=i.state,
        desired_state=i.desired_state,
        state_changed_at=i.state_changed_at,
        resources=ResourcesModel.model_construct(vcpu=i.vcpu_millis / 1000, memory=i.memory_mib),
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


def image_out(image: Image) -> ImageOut:
    fields = set(ImageConfigOut.model_fields)
    config: dict[str, Any] = {k: v for k, v in image.config.items() if k in fields}
    return ImageOut(
        id=image.id,
        name=image.name,
        status=image.status,
        digest=image.digest,
        size=image.size,
        config=ImageConfigOut.model_validate(config),
        error=image.error,
        location=location_of(image),
        created_at=image.created_at,
        updated_at=image.updated_at,
    )


def registry_credential_out(row: RegistryCredential) -> RegistryCredentialOut:
    """Never the password."""
    return RegistryCredentialOut(
        registry=row.registry,
        username=row.username,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def node_out(node: Node) -> NodeOut:
    beat = node.heartbeat or None
    return NodeOut.model_construct(
        id=node.id,
        hostname=node.hostname,
        ip_address=node.ip_address,
        region_id=node.region_id,
        state=node.state,
        state_changed_at=node.state_changed_at,
        runtime=node.runtime,
        resources=ResourcesModel.model_construct(
            vcpu=node.vcpu_millis / 1000, memory=node.memory_mib
        ),
        disk=node.disk_mib,
        last_heartbeat_at=node.last_heartbeat_at,
        heartbeat=None if beat is None else NodeHeartbeatOut.model_validate(_heartbeat(beat)),
        created_at=node.created_at,
        updated_at=node.updated_at,
        subnet=node.subnet,
    )


def _heartbeat(beat: dict[str, Any]) -> dict[str, Any]:
    return {k: beat.get(k) for k in ("capacity", "used", "available")}


def token_out(token: Token) -> TokenOut:
    return TokenOut(
        id=token.id,
        name=token.name,
        scope=token.scope,
        prefix=token.prefix,
        node_id=token.node_id,
        created_at=token.created_at,
        last_used_at=token.last_used_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
    )


def region_out(region: Region) -> RegionOut:
    return RegionOut(
        id=region.id,
        name=region.name,
        code=region.code,
        country=region.country,
        created_at=region.created_at,
        updated_at=region.updated_at,
    )
