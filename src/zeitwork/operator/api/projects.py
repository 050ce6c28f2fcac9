"""``/api/v1/projects``, ``/api/v1/domains`` and ``/api/v1/deployments`` (admin).

Projects and domains: create, list, get, delete (domains also ``PUT /{id}`` to bind a
deployment: that is what routes a host). Deployments: list, get, and create, which places
``replicas`` instances spread across nodes, all or none (409 naming the shortfall).
Rollouts, rollbacks and deployment state tracking are a later issue: a new deployment
stays ``deploying``.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from zeitwork.core.errors import InvalidInput
from zeitwork.core.states import DeploymentState
from zeitwork.core.web_policy import check_cors, check_frame_options, check_header_value
from zeitwork.operator.api.convert import deployment_out, domain_out, instance_out, project_out
from zeitwork.operator.api.instances import spec_of
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.pages import PageRequest
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.wire.admin import (
    DeploymentCreate,
    DeploymentCreated,
    DeploymentOut,
    DomainBind,
    DomainCreate,
    DomainOut,
    DomainPathRateLimits,
    DomainRateLimit,
    ProjectCreate,
    ProjectOut,
)
from zeitwork.wire.routes import EdgePolicyOverride


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")
    return slug or "project"


def check_edge_policy(policy: EdgePolicyOverride) -> None:
    """The edges' own rules (``zeitwork.core.web_policy``): a policy they would refuse is a
    422 here, not a domain left on the global policy at every edge."""
    try:
        if policy.cors is not None:
            check_cors(policy.cors)
        if (h := policy.headers) is not None:
            if h.frame_options:  # "" switches the header off
                check_frame_options(h.frame_options)
            for name in ("referrer_policy", "permissions_policy", "content_security_policy"):
                value = getattr(h, name)
                if value:
                    check_header_value(name, value)
            for header in h.override or ():
                check_header_value("override", header)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def router(deps: Deps) -> APIRouter:
    root = APIRouter()
    admin = require(deps, Scope.ADMIN)
    store = deps.projects

    projects = APIRouter(prefix="/projects", tags=["projects"], dependencies=[Depends(admin)])

    @projects.get("")
    async def list_projects(
        request: Request, response: Response, page: Annotated[PageRequest, Depends(page_params)]
    ) -> list[ProjectOut]:
        result = await store.list_projects(page)
        set_next_link(request, response, result)
        return [project_out(p) for p in result.items]

    @projects.post("", status_code=201)
    async def create_project(body: ProjectCreate) -> ProjectOut:
        project = await store.create_project(
            name=body.name,
            slug=body.slug or slugify(body.name),
            github_repo=body.github_repo,
            default_branch=body.default_branch,
        )
        return project_out(project)

    @projects.get("/{project_id}")
    async def get_project(project_id: uuid.UUID) -> ProjectOut:
        return project_out(await store.get_project(project_id))

    @projects.delete("/{project_id}", status_code=204)
    async def delete_project(project_id: uuid.UUID) -> Response:
        await store.delete_project(project_id)
        return Response(status_code=204)

    domains = APIRouter(prefix="/domains", tags=["domains"])
    domain_reader = require(deps, Scope.PROXY)

    @domains.get("", dependencies=[Depends(domain_reader)])
    async def list_domains(
        request: Request,
        response: Response,
        page: Annotated[PageRequest, Depends(page_params)],
        project_id: Annotated[uuid.UUID | None, Query()] = None,
        deployment_id: Annotated[uuid.UUID | None, Query()] = None,
    ) -> list[DomainOut]:
        result = await store.list_domains(page, project_id=project_id, deployment_id=deployment_id)
        set_next_link(request, response, result)
        return [domain_out(d) for d in result.items]

    @domains.post("", status_code=201, dependencies=[Depends(admin)])
    async def create_domain(body: DomainCreate) -> DomainOut:
        environment_id = body.project_environment_id
        if body.environment is not None:
            env = await deps.releases.environment(body.project_id, body.environment, create=True)
            environment_id = env.id
        domain = await store.create_domain(
            name=body.name,
            project_id=body.project_id,
            deployment_id=body.deployment_id,
            project_environment_id=environment_id,
            verification_token=secrets.token_urlsafe(24),
        )
        return domain_out(domain)

    @domains.get("/{domain_id}", dependencies=[Depends(domain_reader)])
    async def get_domain(domain_id: uuid.UUID) -> DomainOut:
        return domain_out(await store.get_domain(domain_id))

    @domains.put("/{domain_id}", dependencies=[Depends(admin)])
    async def bind_domain(domain_id: uuid.UUID, body: DomainBind) -> DomainOut:
        environment_id = body.project_environment_id
        if body.environment is not None:
            current = await store.get_domain(domain_id)
            if current.project_id is None:
                raise InvalidInput("the domain belongs to no project; bind it by id")
            env = await deps.releases.environment(current.project_id, body.environment, create=True)
            environment_id = env.id
        return domain_out(
            await store.bind_domain(
                domain_id, body.deployment_id, project_environment_id=environment_id
            )
        )

    @domains.post("/{domain_id}/verify", dependencies=[Depends(admin)])
    async def verify_domain(domain_id: uuid.UUID) -> DomainOut:
        """Look up ``_zeitwork.<name>`` TXT: verified when it holds the domain's token."""
        return domain_out(await deps.domain_verifier.verify(domain_id))

    @domains.put("/{domain_id}/edge-policy", dependencies=[Depends(admin)])
    async def set_domain_edge_policy(domain_id: uuid.UUID, body: EdgePolicyOverride) -> DomainOut:
        """CORS and security headers for this host at every edge; ``{}`` clears it."""
        check_edge_policy(body)
        policy = body.model_dump(exclude_none=True, mode="json") or None
        return domain_out(await store.set_domain_edge_policy(domain_id, policy))

    @domains.put("/{domain_id}/rate-limit", dependencies=[Depends(admin)])
    async def set_domain_rate_limit(domain_id: uuid.UUID, body: DomainRateLimit) -> DomainOut:
        return domain_out(
            await store.set_domain_rate_limit(domain_id, body.rate_limit_rps, body.rate_limit_burst)
        )

    @domains.put("/{domain_id}/path-rate-limits", dependencies=[Depends(admin)])
    async def set_domain_path_rate_limits(
        domain_id: uuid.UUID, body: DomainPathRateLimits
    ) -> DomainOut:
        """Per-client limits for path prefixes of this host at every edge (``/login`` at 1
        per second while the rest of the host keeps its own limit); ``{"limits": []}``
        removes them."""
        limits = [limit.model_dump(mode="json") for limit in body.limits] or None
        return domain_out(await store.set_domain_path_rate_limits(domain_id, limits))

    @domains.delete("/{domain_id}", status_code=204, dependencies=[Depends(admin)])
    async def delete_domain(domain_id: uuid.UUID) -> Response:
        await store.delete_domain(domain_id)
        return Response(status_code=204)

    deployments = APIRouter(
        prefix="/deployments", tags=["deployments"], dependencies=[Depends(admin)]
    )

    @deployments.get("")
    async def list_deployments(
        request: Request,
        response: Response,
        page: Annotated[PageRequest, Depends(page_params)],
        project_id: Annotated[uuid.UUID | None, Query()] = None,
        state: Annotated[DeploymentState | None, Query()] = None,
    ) -> list[DeploymentOut]:
        result = await store.list_deployments(page, project_id=project_id, state=state)
        set_next_link(request, response, result)
        return [deployment_out(d) for d in result.items]

    @deployments.post("", status_code=201)
    async def create_deployment(body: DeploymentCreate) -> DeploymentCreated:
        spec = spec_of(
            image_id=body.image_id,
            resources=body.resources,
            default_port=body.port,
            environment_variables=body.env,
        )
        deployment, placed = await deps.deployment_service.create(
            project_id=body.project_id, spec=spec, replicas=body.replicas
        )
        out = deployment_out(deployment, [i.id for i in placed])
        return DeploymentCreated(**out.model_dump(), instances=[instance_out(i) for i in placed])

    @deployments.get("/{deployment_id}")
    async def get_deployment(deployment_id: uuid.UUID) -> DeploymentOut:
        deployment, instance_ids = await store.get_deployment(deployment_id)
        return deployment_out(deployment, instance_ids)

    for sub in (projects, domains, deployments):
        root.include_router(sub)
    return root
