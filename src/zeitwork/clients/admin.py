"""The CLI's client of the operator's admin API: tokens, images, projects, deployments,
domains, instances, nodes. One pooled HTTP client per command run.

The models here are the fields the CLI shows; unknown fields are ignored so that an operator
that grew a field does not break an older CLI. Errors are the ``ZeitworkError`` tree
(``raise_for_status``), transport failures ``ServiceUnavailable`` naming the operator.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors, raise_for_status
from zeitwork.core.errors import ServiceUnavailable

_CHUNK = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Resources(_Model):
    vcpu: float
    memory: int


class ImageInfo(_Model):
    id: uuid.UUID
    name: str
    status: str
    digest: str | None = None
    size: int | None = None
    created_at: datetime


class NodeInfo(_Model):
    id: uuid.UUID
    hostname: str
    ip_address: str
    state: str
    runtime: str | None = None
    resources: Resources
    last_heartbeat_at: datetime | None = None


class InstanceInfo(_Model):
    id: uuid.UUID
    node_id: uuid.UUID | None = None
    image_id: uuid.UUID
    deployment_id: uuid.UUID | None = None
    state: str
    desired_state: str
    resources: Resources
    ip_address: str | None = None
    port: int | None = None
    reason: str | None = None
    created_at: datetime


class ProjectInfo(_Model):
    id: uuid.UUID
    name: str
    slug: str


class DeploymentInfo(_Model):
    id: uuid.UUID
    project_id: uuid.UUID
    image_id: uuid.UUID | None = None
    state: str
    replicas: int
    port: int | None = None
    instance_ids: list[uuid.UUID] | None = None


class DnsRecordInfo(_Model):
    type: str
    name: str
    value: str


class PathLimitInfo(_Model):
    path_prefix: str
    rps: float
    burst: int | None = None


class DomainInfo(_Model):
    id: uuid.UUID
    name: str
    project_id: uuid.UUID | None = None
    deployment_id: uuid.UUID | None = None
    verified: bool = False
    verification_record: DnsRecordInfo | None = None
    rate_limit_rps: float | None = None
    rate_limit_burst: int | None = None
    path_rate_limits: list[PathLimitInfo] = []
    edge_policy: dict[str, Any] | None = None


class NewToken(_Model):
    id: uuid.UUID
    scope: str
    token: str


_M = TypeVar("_M", bound=BaseModel)


def _parse(kind: type[_M], response: httpx.Response) -> _M:
    try:
        return kind.model_validate_json(response.content)
    except ValidationError as exc:
        raise ServiceUnavailable(f"operator sent an invalid {kind.__name__}: {exc}") from exc


def _parse_list(kind: type[_M], response: httpx.Response) -> list[_M]:
    try:
        return TypeAdapter(list[kind]).validate_json(response.content)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise ServiceUnavailable(f"operator sent an invalid {kind.__name__} list: {exc}") from exc


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


class AdminClient:
    """Typed calls of the operator API with an admin token."""

    def __init__(self, *, base_url: str, token: str, connect_timeout: float = 3.0) -> None:
        self._http: httpx.AsyncClient = http_client(
            ClientOptions(
                base_url=base_url.rstrip("/"),
                token=token,
                connect_timeout=connect_timeout,
                read_timeout=60.0,
                max_connections=4,
            )
        )

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with map_http_errors("operator"):
            response = await self._http.request(method, path, **kwargs)
        raise_for_status(response)
        return response

    async def _list(self, kind: type[_M], path: str, params: dict[str, str]) -> list[_M]:
        """Every item of a list endpoint, following the cursor until the last page."""
        items: list[_M] = []
        query = {**params, "limit": "1000"}
        while True:
            response = await self._request("GET", path, params=query)
            page = _parse_list(kind, response)
            items.extend(page)
            if "next" not in response.links or not page:
                return items
            query["after"] = str(getattr(page[-1], "id", ""))

    # tokens

    async def create_token(self, scope: str, *, name: str = "") -> NewToken:
        """A new token of ``scope`` (``admin``, ``join``, ``proxy``); the secret is in the
        answer only."""
        response = await self._request(
            "POST", "/api/v1/tokens", json={"scope": scope, "name": name}
        )
        return _parse(NewToken, response)

    async def revoke_token(self, token_id: uuid.UUID) -> None:
        await self._request("DELETE", f"/api/v1/tokens/{token_id}")

    # images

    async def import_image(self, archive: Path, *, name: str) -> ImageInfo:
        """Upload an OCI image archive (``buildah push IMAGE oci-archive:FILE``)."""
        size = (await asyncio.to_thread(archive.stat)).st_size
        response = await self._request(
            "POST",
            "/api/v1/images/import",
            params={"name": name},
            content=_file_chunks(archive),
            headers={
                "Content-Type": "application/x-tar",
                "Content-Length": str(size),
            },
            timeout=httpx.Timeout(600.0, connect=5.0),
        )
        return _parse(ImageInfo, response)

    async def images(self) -> list[ImageInfo]:
        return await self._list(ImageInfo, "/api/v1/images", {})

    # nodes and instances

    async def nodes(self) -> list[NodeInfo]:
        return await self._list(NodeInfo, "/api/v1/nodes", {})

    async def instances(self, *, deployment_id: uuid.UUID | None = None) -> list[InstanceInfo]:
        params = {"deployment_id": str(deployment_id)} if deployment_id else {}
        return await self._list(InstanceInfo, "/api/v1/instances", params)

    async def instance(self, instance_id: uuid.UUID) -> InstanceInfo:
        return _parse(InstanceInfo, await self._request("GET", f"/api/v1/instances/{instance_id}"))

    async def terminate_instance(self, instance_id: uuid.UUID) -> InstanceInfo:
        response = await self._request("DELETE", f"/api/v1/instances/{instance_id}")
        return _parse(InstanceInfo, response)

    # projects, deployments, domains

    async def create_project(self, name: str) -> ProjectInfo:
        response = await self._request("POST", "/api/v1/projects", json={"name": name})
        return _parse(ProjectInfo, response)

    async def projects(self) -> list[ProjectInfo]:
        return await self._list(ProjectInfo, "/api/v1/projects", {})

    async def create_deployment(
        self,
        *,
        project_id: uuid.UUID,
        image_id: uuid.UUID,
        port: int,
        replicas: int = 1,
        vcpu: float = 0.25,
        memory: int = 128,
        env: dict[str, str] | None = None,
    ) -> DeploymentInfo:
        body = {
            "project_id": str(project_id),
            "image_id": str(image_id),
            "replicas": replicas,
            "port": port,
            "resources": {"vcpu": vcpu, "memory": memory},
            "env": env or {},
        }
        return _parse(DeploymentInfo, await self._request("POST", "/api/v1/deployments", json=body))

    async def deployments(self) -> list[DeploymentInfo]:
        return await self._list(DeploymentInfo, "/api/v1/deployments", {})

    async def create_domain(
        self, name: str, *, project_id: uuid.UUID, deployment_id: uuid.UUID | None
    ) -> DomainInfo:
        body = {
            "name": name,
            "project_id": str(project_id),
            "deployment_id": str(deployment_id) if deployment_id else None,
        }
        return _parse(DomainInfo, await self._request("POST", "/api/v1/domains", json=body))

    async def bind_domain(self, domain_id: uuid.UUID, deployment_id: uuid.UUID) -> DomainInfo:
        response = await self._request(
            "PUT", f"/api/v1/domains/{domain_id}", json={"deployment_id": str(deployment_id)}
        )
        return _parse(DomainInfo, response)

    async def domains(self) -> list[DomainInfo]:
        return await self._list(DomainInfo, "/api/v1/domains", {})

    async def internal_ca_certificate(self) -> str:
        """The internal CA's certificate (PEM) the edges issue with in internal TLS mode."""
        response = await self._request("GET", "/api/v1/internal-ca")
        return str(response.json()["cert_pem"])

    async def verify_domain(self, domain_id: uuid.UUID) -> DomainInfo:
        response = await self._request("POST", f"/api/v1/domains/{domain_id}/verify")
        return _parse(DomainInfo, response)

    async def set_domain_rate_limit(
        self, domain_id: uuid.UUID, rps: float | None, burst: int | None
    ) -> DomainInfo:
        body = {"rate_limit_rps": rps, "rate_limit_burst": burst}
        response = await self._request("PUT", f"/api/v1/domains/{domain_id}/rate-limit", json=body)
        return _parse(DomainInfo, response)

    async def set_domain_edge_policy(
        self, domain_id: uuid.UUID, policy: dict[str, Any]
    ) -> DomainInfo:
        """CORS and security headers of the domain at the edges (``{}`` clears them)."""
        response = await self._request(
            "PUT", f"/api/v1/domains/{domain_id}/edge-policy", json=policy
        )
        return _parse(DomainInfo, response)

    async def set_domain_path_rate_limits(
        self, domain_id: uuid.UUID, limits: list[PathLimitInfo]
    ) -> DomainInfo:
        body = {"limits": [limit.model_dump(mode="json") for limit in limits]}
        response = await self._request(
            "PUT", f"/api/v1/domains/{domain_id}/path-rate-limits", json=body
        )
        return _parse(DomainInfo, response)


async def probe(url: str, *, within: float = 2.0, host: str | None = None) -> int | None:
    """The HTTP status of ``GET url``, or None when nothing answers (readiness probes)."""
    options = ClientOptions(
        base_url=url,
        connect_timeout=within,
        read_timeout=within,
        max_connections=1,
        extra_headers={"Host": host} if host else {},
    )
    async with http_client(options) as client:
        try:
            response = await client.get(url)
        except httpx.HTTPError:
            return None
        return response.status_code
