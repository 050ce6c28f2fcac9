"""The CLI's client of the operator's admin API: tokens, images, projects, deployments,
domains, instances, nodes, and an app's releases, status, configuration, events and logs.
One pooled HTTP client per command run.

Answers are parsed with the operator's own models (``zeitwork.wire.admin``,
``zeitwork.wire.releases``) with ``extra="ignore"`` at validation time, nested models
included: an operator that grew a field does not break an older CLI. Errors are the
``ZeitworkError`` tree (``raise_for_status``), transport failures ``ServiceUnavailable``
naming the operator. The event and log streams are Server-Sent Events followed across
reconnections (``clients.sse.follow``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors, raise_for_status
from zeitwork.clients.sse import Backoff, StreamOpener, follow
from zeitwork.core.errors import Conflict, ServiceUnavailable
from zeitwork.wire.admin import (
    DeploymentCreated,
    DeploymentOut,
    DomainOut,
    ImageOut,
    InstanceOut,
    LogRecord,
    NodeOut,
    ProjectOut,
    TokenCreated,
)
from zeitwork.wire.releases import (
    AppStatus,
    EnvChange,
    EnvOut,
    EventOut,
    ReleaseCreate,
    ReleaseOut,
    RollbackRequest,
    ScaleRequest,
)
from zeitwork.wire.routes import PathRateLimit
from zeitwork.wire.webhooks import WebhookSecretOut, WebhookSecretRequest

_CHUNK = 1024 * 1024
_PAGE = 1000


_LOG_RECORD: TypeAdapter[LogRecord] = TypeAdapter(LogRecord)


def parse_log_record(text: str) -> LogRecord:
    """A log stream's JSON object: a line or a notice."""
    try:
        return _LOG_RECORD.validate_json(text, extra="ignore")
    except ValidationError as exc:
        raise ServiceUnavailable(f"operator sent an invalid log record: {text[:200]}") from exc


def parse_event(text: str) -> EventOut:
    try:
        return EventOut.model_validate_json(text, extra="ignore")
    except ValidationError as exc:
        raise ServiceUnavailable(f"operator sent an invalid event: {text[:200]}") from exc


_M = TypeVar("_M", bound=BaseModel)


def _parse(kind: type[_M], response: httpx.Response) -> _M:
    try:
        return kind.model_validate_json(response.content, extra="ignore")
    except ValidationError as exc:
        raise ServiceUnavailable(f"operator sent an invalid {kind.__name__}: {exc}") from exc


def _parse_list(kind: type[_M], response: httpx.Response) -> list[_M]:
    try:
        return TypeAdapter(list[kind]).validate_json(  # type: ignore[valid-type]
            response.content, extra="ignore"
        )
    except ValidationError as exc:
        raise ServiceUnavailable(f"operator sent an invalid {kind.__name__} list: {exc}") from exc


def _next_after(response: httpx.Response) -> str | None:
    """The ``after`` cursor of the ``Link: <...>; rel="next"`` URL."""
    query = parse_qs(urlsplit(response.links["next"].get("url", "")).query)
    values = query.get("after")
    return values[0] if values else None


def _environment(environment: str) -> dict[str, str]:
    return {"environment": environment}


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


class AdminClient:
    """Typed calls of the operator API with an admin token."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        connect_timeout: float = 3.0,
        http: httpx.AsyncClient | None = None,
        stream_backoff: Backoff | None = None,
    ) -> None:
        """``http`` replaces the pooled client (tests pass one on a mock transport);
        ``stream_backoff`` paces reconnections of followed streams."""
        self._http: httpx.AsyncClient = http or http_client(
            ClientOptions(
                base_url=base_url.rstrip("/"),
                token=token,
                connect_timeout=connect_timeout,
                read_timeout=60.0,
                max_connections=4,
            )
        )
        self._connect_timeout = connect_timeout
        self._stream_backoff = stream_backoff

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
            query["after"] = _next_after(response) or str(getattr(page[-1], "id", ""))

    # tokens

    async def create_token(self, scope: str, *, name: str = "") -> TokenCreated:
        """A new token of ``scope`` (``admin``, ``join``, ``proxy``); the secret is in the
        answer only."""
        response = await self._request(
            "POST", "/api/v1/tokens", json={"scope": scope, "name": name}
        )
        return _parse(TokenCreated, response)

    async def revoke_token(self, token_id: uuid.UUID) -> None:
        await self._request("DELETE", f"/api/v1/tokens/{token_id}")

    # images

    async def import_image(self, archive: Path, *, name: str) -> ImageOut:
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
        return _parse(ImageOut, response)

    async def images(self) -> list[ImageOut]:
        return await self._list(ImageOut, "/api/v1/images", {})

    # nodes and instances

    async def nodes(self) -> list[NodeOut]:
        return await self._list(NodeOut, "/api/v1/nodes", {})

    async def instances(self, *, deployment_id: uuid.UUID | None = None) -> list[InstanceOut]:
        params = {"deployment_id": str(deployment_id)} if deployment_id else {}
        return await self._list(InstanceOut, "/api/v1/instances", params)

    async def instance(self, instance_id: uuid.UUID) -> InstanceOut:
        return _parse(InstanceOut, await self._request("GET", f"/api/v1/instances/{instance_id}"))

    async def terminate_instance(self, instance_id: uuid.UUID) -> InstanceOut:
        response = await self._request("DELETE", f"/api/v1/instances/{instance_id}")
        return _parse(InstanceOut, response)

    # projects, deployments, domains

    async def create_project(self, name: str) -> ProjectOut:
        response = await self._request("POST", "/api/v1/projects", json={"name": name})
        return _parse(ProjectOut, response)

    async def projects(self) -> list[ProjectOut]:
        return await self._list(ProjectOut, "/api/v1/projects", {})

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
    ) -> DeploymentCreated:
        body = {
            "project_id": str(project_id),
            "image_id": str(image_id),
            "replicas": replicas,
            "port": port,
            "resources": {"vcpu": vcpu, "memory": memory},
            "env": env or {},
        }
        response = await self._request("POST", "/api/v1/deployments", json=body)
        return _parse(DeploymentCreated, response)

    async def deployments(self) -> list[DeploymentOut]:
        return await self._list(DeploymentOut, "/api/v1/deployments", {})

    async def create_domain(
        self, name: str, *, project_id: uuid.UUID, deployment_id: uuid.UUID | None
    ) -> DomainOut:
        body = {
            "name": name,
            "project_id": str(project_id),
            "deployment_id": str(deployment_id) if deployment_id else None,
        }
        return _parse(DomainOut, await self._request("POST", "/api/v1/domains", json=body))

    async def bind_domain(self, domain_id: uuid.UUID, deployment_id: uuid.UUID) -> DomainOut:
        response = await self._request(
            "PUT", f"/api/v1/domains/{domain_id}", json={"deployment_id": str(deployment_id)}
        )
        return _parse(DomainOut, response)

    async def domains(self) -> list[DomainOut]:
        return await self._list(DomainOut, "/api/v1/domains", {})

    async def internal_ca_certificate(self) -> str:
        """The internal CA's certificate (PEM) the edges issue with in internal TLS mode."""
        response = await self._request("GET", "/api/v1/internal-ca")
        return str(response.json()["cert_pem"])

    async def verify_domain(self, domain_id: uuid.UUID) -> DomainOut:
        response = await self._request("POST", f"/api/v1/domains/{domain_id}/verify")
        return _parse(DomainOut, response)

    async def set_domain_rate_limit(
        self, domain_id: uuid.UUID, rps: float | None, burst: int | None
    ) -> DomainOut:
        body = {"rate_limit_rps": rps, "rate_limit_burst": burst}
        response = await self._request("PUT", f"/api/v1/domains/{domain_id}/rate-limit", json=body)
        return _parse(DomainOut, response)

    async def set_domain_edge_policy(
        self, domain_id: uuid.UUID, policy: dict[str, Any]
    ) -> DomainOut:
        """CORS and security headers of the domain at the edges (``{}`` clears them)."""
        response = await self._request(
            "PUT", f"/api/v1/domains/{domain_id}/edge-policy", json=policy
        )
        return _parse(DomainOut, response)

    async def set_domain_path_rate_limits(
        self, domain_id: uuid.UUID, limits: list[PathRateLimit]
    ) -> DomainOut:
        body = {"limits": [limit.model_dump(mode="json") for limit in limits]}
        response = await self._request(
            "PUT", f"/api/v1/domains/{domain_id}/path-rate-limits", json=body
        )
        return _parse(DomainOut, response)

    async def bind_domain_to_environment(
        self, name: str, *, project_id: uuid.UUID, environment: str = "production"
    ) -> DomainOut:
        """Route ``name`` to the environment's current release (created if new)."""
        existing = {d.name: d for d in await self.domains()}.get(name.strip().lower())
        if existing is None:
            body: dict[str, Any] = {
                "name": name,
                "project_id": str(project_id),
                "environment": environment,
            }
            return _parse(DomainOut, await self._request("POST", "/api/v1/domains", json=body))
        if existing.project_id is not None and existing.project_id != project_id:
            raise Conflict(f"domain {existing.name} belongs to another app; remove it there first")
        response = await self._request(
            "PUT", f"/api/v1/domains/{existing.id}", json={"environment": environment}
        )
        return _parse(DomainOut, response)

    # apps: releases, status, scale, configuration

    async def create_release(self, project: str, release: ReleaseCreate) -> ReleaseOut:
        """Deploy: a new release of ``project`` (id or slug), rolled out by the operator."""
        response = await self._request(
            "POST",
            f"/api/v1/projects/{project}/releases",
            json=release.model_dump(mode="json", exclude_none=True),
        )
        return _parse(ReleaseOut, response)

    async def releases(self, project: str, *, environment: str = "production") -> list[ReleaseOut]:
        """The environment's release history, newest first (pages of versions ``before``)."""
        found: list[ReleaseOut] = []
        query = {**_environment(environment), "limit": str(_PAGE)}
        while True:
            response = await self._request(
                "GET", f"/api/v1/projects/{project}/releases", params=query
            )
            page = _parse_list(ReleaseOut, response)
            found.extend(page)
            if len(page) < _PAGE or page[-1].version <= 1:
                return found
            query["before"] = str(page[-1].version)

    async def release(
        self, project: str, version: int, *, environment: str = "production"
    ) -> ReleaseOut:
        response = await self._request(
            "GET",
            f"/api/v1/projects/{project}/releases/{version}",
            params=_environment(environment),
        )
        return _parse(ReleaseOut, response)

    async def rollback(
        self, project: str, *, version: int | None = None, environment: str = "production"
    ) -> ReleaseOut:
        body = RollbackRequest(environment=environment, version=version)
        response = await self._request(
            "POST", f"/api/v1/projects/{project}/rollback", json=body.model_dump(mode="json")
        )
        return _parse(ReleaseOut, response)

    async def scale(
        self, project: str, replicas: int, *, environment: str = "production"
    ) -> AppStatus:
        body = ScaleRequest(environment=environment, replicas=replicas)
        response = await self._request(
            "PUT", f"/api/v1/projects/{project}/scale", json=body.model_dump(mode="json")
        )
        return _parse(AppStatus, response)

    async def status(self, project: str, *, environment: str = "production") -> AppStatus:
        response = await self._request(
            "GET", f"/api/v1/projects/{project}/status", params=_environment(environment)
        )
        return _parse(AppStatus, response)

    async def project_webhook(self, project: str, *, rotate: bool = False) -> WebhookSecretOut:
        """The GitHub webhook's URL path and secret for ``project`` (made on first use,
        replaced with ``rotate``)."""
        body = WebhookSecretRequest(rotate=rotate).model_dump(mode="json")
        response = await self._request("POST", f"/api/v1/projects/{project}/webhook", json=body)
        return _parse(WebhookSecretOut, response)

    async def env(self, project: str, *, environment: str = "production") -> EnvOut:
        response = await self._request(
            "GET", f"/api/v1/projects/{project}/env", params=_environment(environment)
        )
        return _parse(EnvOut, response)

    async def change_env(self, project: str, change: EnvChange) -> ReleaseOut:
        """Set, set as secrets, or unset variables: one new release, rolled out."""
        response = await self._request(
            "PATCH", f"/api/v1/projects/{project}/env", json=change.model_dump(mode="json")
        )
        return _parse(ReleaseOut, response)

    async def drain_node(self, node_id: uuid.UUID) -> NodeOut:
        """Move the node's instances elsewhere (health-gated), then stop them there."""
        return _parse(NodeOut, await self._request("POST", f"/api/v1/nodes/{node_id}/drain"))

    async def undrain_node(self, node_id: uuid.UUID) -> NodeOut:
        return _parse(NodeOut, await self._request("POST", f"/api/v1/nodes/{node_id}/undrain"))

    # events and logs

    async def events(
        self, *, filters: dict[str, str] | None = None, after: int | None = None, limit: int = 100
    ) -> list[EventOut]:
        """One page of events in ``seq`` order after ``after``; ``filters`` are the query
        parameters of ``GET /api/v1/events`` (``project``, ``rollout_id``, ``kind``...)."""
        params = {**(filters or {}), "limit": str(limit)}
        if after is not None:
            params["after"] = str(after)
        response = await self._request("GET", "/api/v1/events", params=params)
        return _parse_list(EventOut, response)

    async def recent_events(
        self, *, filters: dict[str, str] | None = None, count: int = 100
    ) -> list[EventOut]:
        """The newest ``count`` matching events, oldest first (reads every page: the list
        is in ``seq`` order from the start)."""
        kept: collections.deque[EventOut] = collections.deque(maxlen=count)
        after = 0
        while True:
            page = await self.events(filters=filters, after=after, limit=_PAGE)
            kept.extend(page)
            if len(page) < _PAGE:
                return list(kept)
            after = page[-1].seq

    async def follow_events(
        self,
        *,
        filters: dict[str, str] | None = None,
        after: int | None = None,
        backlog: int = 100,
        on_retry: Callable[[str, float], None] | None = None,
        max_failures: int | None = None,
    ) -> AsyncIterator[EventOut]:
        """Events as they are recorded, across operator restarts, each once: after
        ``after``, else starting with the newest ``backlog`` matching ones."""
        params = {**(filters or {}), "follow": "true", "limit": str(backlog)}
        stream = follow(
            self._sse_opener("/api/v1/events", params),
            last_event_id=str(after) if after is not None else None,
            backoff=self._new_backoff(),
            on_retry=on_retry,
            max_failures=max_failures,
        )
        async for message in stream:
            yield parse_event(message.data)

    async def logs(self, project: str, *, params: dict[str, str]) -> list[LogRecord]:
        """The app's recent log lines (``since``, ``instance``, ``release``, ``environment``),
        merged by time."""
        response = await self._request("GET", f"/api/v1/projects/{project}/logs", params=params)
        return _log_records(response)

    async def follow_logs(
        self,
        project: str,
        *,
        params: dict[str, str],
        on_retry: Callable[[str, float], None] | None = None,
    ) -> AsyncIterator[LogRecord]:
        """The app's log lines as they are written, through restarts and rollouts."""
        query = {**params, "follow": "true", "format": "sse"}
        stream = follow(
            self._sse_opener(f"/api/v1/projects/{project}/logs", query),
            backoff=self._new_backoff(),
            on_retry=on_retry,
        )
        async for message in stream:
            yield parse_log_record(message.data)

    def _new_backoff(self) -> Backoff:
        if self._stream_backoff is None:
            return Backoff()
        return Backoff(initial=self._stream_backoff.initial, maximum=self._stream_backoff.maximum)

    def _sse_opener(self, path: str, params: dict[str, str]) -> StreamOpener:
        @asynccontextmanager
        async def open_stream(last_event_id: str | None) -> AsyncIterator[AsyncIterator[str]]:
            headers = {"Accept": "text/event-stream"}
            if last_event_id is not None:
                headers["Last-Event-ID"] = last_event_id
            timeout = httpx.Timeout(_STREAM_READ_TIMEOUT, connect=self._connect_timeout)
            with map_http_errors("operator"):
                async with self._http.stream(
                    "GET", path, params=params, headers=headers, timeout=timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise_for_status(response)
                    yield response.aiter_lines()

        return open_stream


_STREAM_READ_TIMEOUT = 300.0
"""Seconds a followed stream may stay silent before it is reopened (resuming)."""


def _log_records(response: httpx.Response) -> list[LogRecord]:
    """A log answer as a JSON list, NDJSON or a finished event stream."""
    media = response.headers.get("content-type", "").split(";")[0].strip()
    if media == "application/json":
        try:
            items = response.json()
        except ValueError as exc:
            raise ServiceUnavailable("operator sent invalid JSON logs") from exc
        if not isinstance(items, list):
            raise ServiceUnavailable("operator sent logs that are not a list")
        return [parse_log_record(json.dumps(item)) for item in items]
    texts = response.text.splitlines()
    if media == "text/event-stream":
        texts = [t.partition(":")[2].removeprefix(" ") for t in texts if t.startswith("data:")]
    return [parse_log_record(text) for text in texts if text.strip()]


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
