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
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zeitwork.core.errors import InvalidInput
from zeitwork.core.states import DeploymentState
from zeitwork.core.web_policy import check_cors, check_frame_options, check_header_value
from zeitwork.operator.api.instances import InstanceOut, check_environment, spec_of
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.pages import PageRequest
from zeitwork.operator.db.projects import Deployment, Domain, Project
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.operator.services.domains import record_name
from zeitwork.wire.common import ResourcesModel
from zeitwork.wire.releases import ENVIRONMENT_PATTERN
from zeitwork.wire.routes import EdgePolicyOverride, PathRateLimit

SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
HOSTNAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")
    return slug or "project"


def check_hostname(value: str) -> str:
    host = value.strip().lower().rstrip(".")
    if len(host) > 253 or not HOSTNAME.match(host):
        raise ValueError("must be a DNS host name such as app.example.com")
    return host


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    slug: str | None = Field(default=None, pattern=SLUG, description="default: from the name")
    github_repo: str | None = Field(default=None, max_length=200, pattern=r"^[\w.-]+/[\w.-]+$")
    default_branch: str = Field(default="main", min_length=1, max_length=200)


class ProjectOut(BaseModel):
    id: uuid.UUID
    name: str
    slug: str
    github_repo: str | None
    default_branch: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, p: Project) -> ProjectOut:
        return cls(
            id=p.id,
            name=p.name,
            slug=p.slug,
            github_repo=p.github_repo,
            default_branch=p.default_branch,
            created_at=p.created_at,
            updated_at=p.updated_at,
        )


class DomainCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=253)
    project_id: uuid.UUID
    deployment_id: uuid.UUID | None = None
    project_environment_id: uuid.UUID | None = Field(
        default=None, description="route the host to this environment's current release"
    )
    environment: str | None = Field(
        default=None, pattern=ENVIRONMENT_PATTERN, description="the same, by name (production)"
    )

    @field_validator("name")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_hostname(value)

    @model_validator(mode="after")
    def _one_target(self) -> DomainCreate:
        _one_binding(self.deployment_id, self.project_environment_id, self.environment)
        return self


class DomainBind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployment_id: uuid.UUID | None = Field(
        default=None, description="route the host to this deployment (rows from before releases)"
    )
    project_environment_id: uuid.UUID | None = Field(
        default=None, description="route the host to this environment's current release"
    )
    environment: str | None = Field(
        default=None,
        pattern=ENVIRONMENT_PATTERN,
        description="the same, by name in the domain's project; all three null unbinds",
    )

    @model_validator(mode="after")
    def _one_target(self) -> DomainBind:
        _one_binding(self.deployment_id, self.project_environment_id, self.environment)
        return self


def _one_binding(
    deployment_id: uuid.UUID | None, environment_id: uuid.UUID | None, environment: str | None
) -> None:
    if sum(x is not None for x in (deployment_id, environment_id, environment)) > 1:
        raise ValueError("give one of deployment_id, project_environment_id, environment")


class DomainRateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate_limit_rps: float | None = Field(
        gt=0, le=1_000_000, description="requests per second per client at the edge; null: global"
    )
    rate_limit_burst: int | None = Field(
        default=None, ge=1, le=1_000_000, description="burst; null: twice the rate (at least 1)"
    )

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> DomainRateLimit:
        if self.rate_limit_burst is not None and self.rate_limit_rps is None:
            raise ValueError("rate_limit_burst needs rate_limit_rps")
        return self


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


class DomainPathRateLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: list[PathRateLimit] = Field(
        max_length=32, description="per path prefix; [] removes them all"
    )

    @model_validator(mode="after")
    def _distinct_prefixes(self) -> DomainPathRateLimits:
        prefixes = [limit.path_prefix for limit in self.limits]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("each path_prefix may appear once")
        return self


class DnsRecord(BaseModel):
    type: str = "TXT"
    name: str
    value: str


class DomainOut(BaseModel):
    id: uuid.UUID
    name: str
    project_id: uuid.UUID | None
    deployment_id: uuid.UUID | None
    project_environment_id: uuid.UUID | None = None
    verified: bool
    verified_at: datetime | None
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    edge_policy: EdgePolicyOverride | None = None
    path_rate_limits: list[PathRateLimit] = Field(default_factory=list)
    verification_record: DnsRecord | None = Field(
        default=None, description="the TXT record that verifies the domain (until it is verified)"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, d: Domain) -> DomainOut:
        token = d.verification_token
        return cls(
            verification_record=(
                DnsRecord(name=record_name(d.name), value=token)
                if token and not d.verified
                else None
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


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: uuid.UUID
    image_id: uuid.UUID
    replicas: int = Field(default=1, ge=0, le=100)
    resources: ResourcesModel
    port: int = Field(ge=1, le=65535, description="the port the app listens on")
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        return check_environment(value)


class DeploymentOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    image_id: uuid.UUID | None
    state: DeploymentState
    state_changed_at: datetime
    replicas: int
    port: int | None
    resources: ResourcesModel | None
    error: str | None
    instance_ids: list[uuid.UUID] | None = None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, d: Deployment, instance_ids: list[uuid.UUID] | None = None) -> DeploymentOut:
        resources = (
            ResourcesModel.model_construct(vcpu=d.vcpu_millis / 1000, memory=d.memory_mib)
            if d.vcpu_millis and d.memory_mib
            else None
        )
        return cls(
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


class DeploymentCreated(DeploymentOut):
    instances: list[InstanceOut]


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
        return [ProjectOut.of(p) for p in result.items]

    @projects.post("", status_code=201)
    async def create_project(body: ProjectCreate) -> ProjectOut:
        project = await store.create_project(
            name=body.name,
            slug=body.slug or slugify(body.name),
            github_repo=body.github_repo,
            default_branch=body.default_branch,
        )
        return ProjectOut.of(project)

    @projects.get("/{project_id}")
    async def get_project(project_id: uuid.UUID) -> ProjectOut:
        return ProjectOut.of(await store.get_project(project_id))

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
        return [DomainOut.of(d) for d in result.items]

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
        return DomainOut.of(domain)

    @domains.get("/{domain_id}", dependencies=[Depends(domain_reader)])
    async def get_domain(domain_id: uuid.UUID) -> DomainOut:
        return DomainOut.of(await store.get_domain(domain_id))

    @domains.put("/{domain_id}", dependencies=[Depends(admin)])
    async def bind_domain(domain_id: uuid.UUID, body: DomainBind) -> DomainOut:
        environment_id = body.project_environment_id
        if body.environment is not None:
            current = await store.get_domain(domain_id)
            if current.project_id is None:
                raise InvalidInput("the domain belongs to no project; bind it by id")
            env = await deps.releases.environment(current.project_id, body.environment, create=True)
            environment_id = env.id
        return DomainOut.of(
            await store.bind_domain(
                domain_id, body.deployment_id, project_environment_id=environment_id
            )
        )

    @domains.post("/{domain_id}/verify", dependencies=[Depends(admin)])
    async def verify_domain(domain_id: uuid.UUID) -> DomainOut:
        """Look up ``_zeitwork.<name>`` TXT: verified when it holds the domain's token."""
        return DomainOut.of(await deps.domain_verifier.verify(domain_id))

    @domains.put("/{domain_id}/edge-policy", dependencies=[Depends(admin)])
    async def set_domain_edge_policy(domain_id: uuid.UUID, body: EdgePolicyOverride) -> DomainOut:
        """CORS and security headers for this host at every edge; ``{}`` clears it."""
        check_edge_policy(body)
        policy = body.model_dump(exclude_none=True, mode="json") or None
        return DomainOut.of(await store.set_domain_edge_policy(domain_id, policy))

    @domains.put("/{domain_id}/rate-limit", dependencies=[Depends(admin)])
    async def set_domain_rate_limit(domain_id: uuid.UUID, body: DomainRateLimit) -> DomainOut:
        return DomainOut.of(
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
        return DomainOut.of(await store.set_domain_path_rate_limits(domain_id, limits))

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
        return [DeploymentOut.of(d) for d in result.items]

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
        out = DeploymentOut.of(deployment, [i.id for i in placed])
        return DeploymentCreated(**out.model_dump(), instances=[InstanceOut.of(i) for i in placed])

    @deployments.get("/{deployment_id}")
    async def get_deployment(deployment_id: uuid.UUID) -> DeploymentOut:
        deployment, instance_ids = await store.get_deployment(deployment_id)
        return DeploymentOut.of(deployment, instance_ids)

    for sub in (projects, domains, deployments):
        root.include_router(sub)
    return root
