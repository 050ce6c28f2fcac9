"""Clients of the operator's build routes: ``BuildsClient`` for users (the CLI: queue, list,
follow, cancel builds, upload contexts) and ``BuilderClient`` for builders (lease, renew,
log, resolve, finish, download the context, upload the image or say where it was pushed).
One pooled HTTP client each; errors are the ``ZeitworkError`` tree (``raise_for_status``)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors, raise_for_status
from zeitwork.clients.sse import Backoff, StreamOpener, follow
from zeitwork.core.errors import ServiceUnavailable
from zeitwork.wire.builds import (
    BuildCreate,
    BuildFinish,
    BuildJob,
    BuildLogChunk,
    BuildOut,
    ContextOut,
    ImportedImage,
    LeaseRef,
    LeaseRenewed,
    LeaseRequest,
    LogAppend,
    PushedImage,
    ResolveOut,
    ResolveRequest,
)

_CHUNK = 1024 * 1024
_M = TypeVar("_M", bound=BaseModel)
_BUILDS = TypeAdapter(list[BuildOut])
_CHUNKS = TypeAdapter(list[BuildLogChunk])
_STREAM_READ_TIMEOUT = 300.0


def _parse(model: type[_M], response: httpx.Response) -> _M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise ServiceUnavailable(f"operator sent an invalid {model.__name__}: {exc}") from exc


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, _CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Base:
    def __init__(
        self,
        *,
        base_url: str,
        token: str,
        connect_timeout: float = 3.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
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

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with map_http_errors("operator"):
            response = await self._http.request(method, path, **kwargs)
        raise_for_status(response)
        return response


class BuildsClient(_Base):
    """A user's (admin token) calls of the build routes."""

    async def __aenter__(self) -> BuildsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def has_context(self, sha256: str) -> bool:
        with map_http_errors("operator"):
            response = await self._http.head(f"/api/v1/build-contexts/{sha256}")
        if response.status_code == 404:
            return False
        raise_for_status(response)
        return True

    async def upload_context(self, sha256: str, archive: Path) -> ContextOut:
        size = (await asyncio.to_thread(archive.stat)).st_size
        response = await self._request(
            "PUT",
            f"/api/v1/build-contexts/{sha256}",
            content=_file_chunks(archive),
            headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
            timeout=httpx.Timeout(600.0, connect=self._connect_timeout),
        )
        return _parse(ContextOut, response)

    async def create(self, project: str, body: BuildCreate) -> BuildOut:
        response = await self._request(
            "POST",
            f"/api/v1/projects/{project}/builds",
            content=body.model_dump_json(exclude_none=True),
            headers={"Content-Type": "application/json"},
        )
        return _parse(BuildOut, response)

    async def builds(self, *, project: str | None = None, limit: int = 50) -> list[BuildOut]:
        params = {"limit": str(limit)}
        if project:
            params["project"] = project
        response = await self._request("GET", "/api/v1/builds", params=params)
        try:
            return _BUILDS.validate_json(response.content)
        except ValidationError as exc:
            raise ServiceUnavailable(f"operator sent an invalid build list: {exc}") from exc

    async def build(self, build_id: uuid.UUID) -> BuildOut:
        return _parse(BuildOut, await self._request("GET", f"/api/v1/builds/{build_id}"))

    async def cancel(self, build_id: uuid.UUID) -> BuildOut:
        return _parse(BuildOut, await self._request("POST", f"/api/v1/builds/{build_id}/cancel"))

    async def logs(self, build_id: uuid.UUID, *, after: int = 0) -> list[BuildLogChunk]:
        response = await self._request(
            "GET", f"/api/v1/builds/{build_id}/logs", params={"after": str(after)}
        )
        return _CHUNKS.validate_json(response.content)

    async def follow_logs(
        self,
        build_id: uuid.UUID,
        *,
        on_retry: Callable[[str, float], None] | None = None,
    ) -> AsyncIterator[BuildLogChunk | BuildOut]:
        """The build's output chunks as they come, then the finished build (the end)."""
        stream = follow(
            self._opener(f"/api/v1/builds/{build_id}/logs", {"follow": "true"}),
            backoff=Backoff(),
            on_retry=on_retry,
        )
        async for message in stream:
            if message.event == "end":
                yield BuildOut.model_validate_json(message.data)
                return
            yield BuildLogChunk.model_validate_json(message.data)

    def _opener(self, path: str, params: dict[str, str]) -> StreamOpener:
        @asynccontextmanager
        async def open_stream(last_event_id: str | None) -> AsyncIterator[AsyncIterator[str]]:
            query = dict(params)
            if last_event_id is not None and last_event_id.isdigit():
                query["after"] = last_event_id
            timeout = httpx.Timeout(_STREAM_READ_TIMEOUT, connect=self._connect_timeout)
            with map_http_errors("operator"):
                async with self._http.stream(
                    "GET",
                    path,
                    params=query,
                    headers={"Accept": "text/event-stream"},
                    timeout=timeout,
                ) as response:
                    if not response.is_success:
                        await response.aread()
                        raise_for_status(response)
                    yield response.aiter_lines()

        return open_stream


class BuilderClient(_Base):
    """A builder's (``builder`` token) calls."""

    async def lease(self, body: LeaseRequest, *, wait: float = 20.0) -> BuildJob | None:
        response = await self._request(
            "POST",
            "/api/v1/builder/lease",
            params={"wait": str(wait)},
            content=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
            timeout=httpx.Timeout(wait + 30.0, connect=self._connect_timeout),
        )
        if response.status_code == 204:
            return None
        return _parse(BuildJob, response)

    async def _post(self, path: str, body: BaseModel) -> httpx.Response:
        return await self._request(
            "POST",
            path,
            content=body.model_dump_json(),
            headers={"Content-Type": "application/json"},
        )

    async def renew(self, build_id: uuid.UUID, token: uuid.UUID) -> LeaseRenewed:
        response = await self._post(
            f"/api/v1/builder/builds/{build_id}/renew", LeaseRef(lease_token=token)
        )
        return _parse(LeaseRenewed, response)

    async def give_up(self, build_id: uuid.UUID, token: uuid.UUID) -> None:
        await self._post(f"/api/v1/builder/builds/{build_id}/release", LeaseRef(lease_token=token))

    async def append_log(self, build_id: uuid.UUID, token: uuid.UUID, data: str) -> LeaseRenewed:
        response = await self._post(
            f"/api/v1/builder/builds/{build_id}/logs", LogAppend(lease_token=token, data=data)
        )
        return _parse(LeaseRenewed, response)

    async def resolved(
        self, build_id: uuid.UUID, token: uuid.UUID, commit: str | None
    ) -> ResolveOut:
        response = await self._post(
            f"/api/v1/builder/builds/{build_id}/resolved",
            ResolveRequest(lease_token=token, git_commit=commit),
        )
        return _parse(ResolveOut, response)

    async def finish(self, build_id: uuid.UUID, body: BuildFinish) -> BuildOut:
        response = await self._post(f"/api/v1/builder/builds/{build_id}/finish", body)
        return _parse(BuildOut, response)

    async def download_context(self, build_id: uuid.UUID, token: uuid.UUID, dest: Path) -> None:
        with map_http_errors("operator"):
            async with self._http.stream(
                "GET",
                f"/api/v1/builder/builds/{build_id}/context",
                params={"lease_token": str(token)},
                timeout=httpx.Timeout(300.0, connect=self._connect_timeout),
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise_for_status(response)
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        await asyncio.to_thread(_write_all, fd, chunk)
                finally:
                    os.close(fd)

    async def upload_image(
        self, build_id: uuid.UUID, token: uuid.UUID, archive: Path
    ) -> ImportedImage:
        size = (await asyncio.to_thread(archive.stat)).st_size
        response = await self._request(
            "POST",
            f"/api/v1/builder/builds/{build_id}/image",
            params={"lease_token": str(token)},
            content=_file_chunks(archive),
            headers={"Content-Type": "application/x-tar", "Content-Length": str(size)},
            timeout=httpx.Timeout(600.0, connect=self._connect_timeout),
        )
        return _parse(ImportedImage, response)

    async def pushed(self, build_id: uuid.UUID, token: uuid.UUID, reference: str) -> ImportedImage:
        """Tell the operator the image is in the platform registry at ``reference``
        (``repo:tag@digest``); it reads the manifest there and catalogues the image."""
        response = await self._request(
            "POST",
            f"/api/v1/builder/builds/{build_id}/pushed",
            content=PushedImage(lease_token=token, reference=reference).model_dump_json(),
            headers={"Content-Type": "application/json"},
            timeout=httpx.Timeout(600.0, connect=self._connect_timeout),
        )
        return _parse(ImportedImage, response)
