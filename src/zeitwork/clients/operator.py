"""The node agent's client of the operator: register, heartbeat, assignments (long-poll),
instance state reports and image downloads. One pooled HTTP client for its lifetime; the
credential can change (after a registration) without making a new one."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import httpx
from pydantic import BaseModel, ValidationError

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors, raise_for_status
from zeitwork.core.errors import InvalidInput, ServiceUnavailable
from zeitwork.wire.agent import (
    Assignments,
    Heartbeat,
    InstanceStatusReport,
    NodeRegistered,
    NodeRegistration,
)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class OperatorClient:
    def __init__(
        self, *, base_url: str, token: str | None = None, connect_timeout: float = 3.0
    ) -> None:
        self._http: httpx.AsyncClient = http_client(
            ClientOptions(
                base_url=base_url,
                token=token,
                connect_timeout=connect_timeout,
                read_timeout=30.0,
                max_connections=8,
            )
        )

    def use_token(self, token: str) -> None:
        """Authenticate later calls with ``token`` (the node credential)."""
        self._http.headers["Authorization"] = f"Bearer {token}"

    @staticmethod
    def _parse(model: type[BaseModel], response: httpx.Response) -> BaseModel:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ServiceUnavailable(f"operator sent an invalid {model.__name__}: {exc}") from exc

    async def register(
        self, registration: NodeRegistration, *, join_token: str | None = None
    ) -> NodeRegistered:
        """``POST /api/v1/nodes``; with ``join_token`` the answer carries the node credential."""
        headers = {"Authorization": f"Bearer {join_token}"} if join_token else None
        with map_http_errors("operator"):
            response = await self._http.post(
                "/api/v1/nodes",
                content=registration.model_dump_json(exclude_none=True),
                headers={"Content-Type": "application/json", **(headers or {})},
            )
        raise_for_status(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise ServiceUnavailable(
                "operator sent a registration answer that is not JSON"
            ) from exc
        if isinstance(body, dict) and "node_id" not in body and "id" in body:
            body = {"node_id": body["id"], "node_token": body.get("node_token")}
        try:
            return NodeRegistered.model_validate(body)
        except ValidationError as exc:
            raise ServiceUnavailable(f"operator sent an invalid registration: {exc}") from exc

    async def heartbeat(self, node_id: uuid.UUID, heartbeat: Heartbeat) -> None:
        with map_http_errors("operator"):
            response = await self._http.post(
                f"/api/v1/nodes/{node_id}/heartbeat",
                content=heartbeat.model_dump_json(),
                headers={"Content-Type": "application/json"},
            )
        raise_for_status(response)

    async def wait_assignments(
        self, node_id: uuid.UUID, *, version: int | None, wait: float
    ) -> Assignments:
        """The node's assignments; answers at once when they differ from ``version``, else
        after a change or ``wait`` seconds."""
        params = {"wait": str(int(wait))}
        if version is not None:
            params["version"] = str(version)
        with map_http_errors("operator"):
            response = await self._http.get(
                f"/api/v1/nodes/{node_id}/assignments",
                params=params,
                timeout=httpx.Timeout(wait + 15.0, connect=3.0),
            )
        raise_for_status(response)
        parsed = self._parse(Assignments, response)
        assert isinstance(parsed, Assignments)
        return parsed

    async def report_state(self, instance_id: uuid.UUID, report: InstanceStatusReport) -> None:
        with map_http_errors("operator"):
            response = await self._http.put(
                f"/api/v1/instances/{instance_id}/state",
                content=report.model_dump_json(),
                headers={"Content-Type": "application/json"},
            )
        raise_for_status(response)

    async def image_pull_grant(self, image_id: uuid.UUID) -> dict[str, object]:
        """``GET /images/{id}/pull``: where this node pulls the image from the platform
        registry and with which pull-only credential (``agent.images`` reads it)."""
        with map_http_errors("operator"):
            response = await self._http.get(f"/api/v1/images/{image_id}/pull")
        raise_for_status(response)
        body = response.json()
        if not isinstance(body, dict):
            raise InvalidInput(f"image {image_id}: the operator's pull grant is not an object")
        return body

    async def download_image(
        self, image_id: uuid.UUID, dest: Path, *, expected_digest: str | None = None
    ) -> str:
        """Stream the image's OCI archive to ``dest``; returns the digest the operator
        announced. Refuses (InvalidInput) when it differs from ``expected_digest``."""
        with map_http_errors("operator"):
            async with self._http.stream(
                "GET", f"/api/v1/images/{image_id}/archive", timeout=httpx.Timeout(300, connect=5)
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise_for_status(response)
                announced = (
                    response.headers.get("Digest") or response.headers.get("ETag") or ""
                ).strip('"')
                if expected_digest and announced and announced != expected_digest:
                    raise InvalidInput(
                        f"image {image_id}: operator serves {announced}, expected {expected_digest}"
                    )
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    # the disk work runs in a thread: flushing a big archive takes seconds,
                    # and the agent's heartbeats and API share this event loop
                    async for chunk in response.aiter_bytes(1024 * 1024):
                        await asyncio.to_thread(_write_all, fd, chunk)
                    await asyncio.to_thread(os.fsync, fd)
                finally:
                    os.close(fd)
        return announced or expected_digest or ""

    async def aclose(self) -> None:
        await self._http.aclose()
