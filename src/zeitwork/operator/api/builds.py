"""Builds from source: users queue, list, follow and cancel builds and upload contexts
(admin); builders lease, run and finish them (``builder`` scope). The routes are listed in
``zeitwork.wire.builds``; the rules are in ``services.builds``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import TypeAdapter

from zeitwork.core.errors import InvalidInput
from zeitwork.images.reference import parse_reference
from zeitwork.operator.api.security import require
from zeitwork.operator.api.streaming import (
    KEEPALIVE_SECONDS,
    SSE_MEDIA_TYPE,
    StreamBody,
    sse_comment,
    sse_event,
    sse_retry,
)
from zeitwork.operator.db.builds import Build, LogChunk
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Principal, Scope
from zeitwork.wire.builds import (
    SHA256_PATTERN,
    BuildCreate,
    BuildFinish,
    BuildJob,
    BuildLogChunk,
    BuildOut,
    BuildState,
    ContextOut,
    GitTokenSet,
    ImportedImage,
    LeaseRef,
    LeaseRenewed,
    LeaseRequest,
    LogAppend,
    PushedImage,
    RegistryPush,
    ResolveOut,
    ResolveRequest,
)

ARCHIVE_TYPES = {"application/x-tar", "application/octet-stream", "application/gzip"}
_CHUNKS = TypeAdapter(list[BuildLogChunk])
MAX_LEASE_WAIT = 30.0

ProjectRef = Annotated[
    str, Path(min_length=1, max_length=200, description="the project's id or slug")
]
Sha256 = Annotated[str, Path(pattern=SHA256_PATTERN, description="the context's sha256 (hex)")]


def build_out(build: Build) -> BuildOut:
    return BuildOut(
        id=build.id,
        project_id=build.project_id,
        project=build.project_slug,
        environment=build.environment,
        state=build.state,
        reason=build.reason,
        source_kind=build.source_kind,  # type: ignore[arg-type]  # CHECK-constrained column
        git_url=build.git_url,
        git_ref=build.git_ref,
        git_commit=build.git_commit,
        git_path=build.git_path,
        context_sha256=build.context_sha256,
        dockerfile=build.dockerfile,
        stack=build.stack,
        image_id=build.image_id,
        release_id=build.release_id,
        release_version=build.release_version,
        reused_build_id=build.reused_build_id,
        error=build.error,
        failed_step=build.failed_step,
        attempts=build.attempts,
        builder_version=build.builder_version,
        lease_owner=build.lease_owner,
        cancel_requested=build.cancel_requested_at is not None,
        log_size=build.log_size,
        log_truncated=build.log_truncated,
        queued_at=build.queued_at,
        started_at=build.started_at,
        finished_at=build.finished_at,
        durations={k: float(v) for k, v in build.durations.items()},
        created_by=build.created_by,
    )


def chunk_out(chunk: LogChunk) -> BuildLogChunk:
    return BuildLogChunk(seq=chunk.seq, at=chunk.created_at, data=chunk.data)


def _who(principal: Principal) -> str:
    return "admin" if principal.token_id is None else f"token {principal.token_id}"


def _archive_body(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ARCHIVE_TYPES:
        raise HTTPException(
            status_code=415,
            detail="send the archive with Content-Type: application/x-tar (or application/gzip)",
        )


def _declared(request: Request) -> int | None:
    text = request.headers.get("content-length")
    return int(text) if text is not None and text.isdigit() else None


def push_target(deps: Deps, build: Build) -> RegistryPush | None:
    """Where the builder pushes ``build``'s image itself: the project's repository in the
    platform registry, tagged ``build-<id>``; None (the builder uploads the archive) without
    a platform registry, or when it wants credentials: the operator's push account is its
    own, and buildah (1.28) takes no scoped bearer token, so nothing a builder could be
    handed would be limited to the project's repository."""
    platform = deps.image_service.platform_registry
    if platform is None or deps.settings.registry_username:
        return None
    repository = platform.repository_for(build.project_slug)
    return RegistryPush(
        repository=f"{platform.host}/{repository}",
        tag=f"build-{build.id}",
        plain_http=platform.plain_http,
    )


def router(deps: Deps) -> APIRouter:
    api = APIRouter(tags=["builds"])
    admin = require(deps, Scope.ADMIN)
    builder = require(deps, Scope.BUILDER)
    service = deps.build_service

    # -- users -------------------------------------------------------------------------------

    @api.post("/projects/{project}/builds", status_code=201)
    async def create_build(
        project: ProjectRef,
        body: BuildCreate,
        principal: Principal = Depends(admin),  # noqa: B008 (a local: Annotated cannot see it)
    ) -> BuildOut:
        """Build from a git repository or an uploaded context; on success the image is
        released in ``environment``. Follow it with ``GET /builds/{id}/logs?follow=true``."""
        return build_out(await service.create(project, body, created_by=_who(principal)))

    @api.put("/projects/{project}/git-token", status_code=204, dependencies=[Depends(admin)])
    async def set_git_token(project: ProjectRef, body: GitTokenSet) -> Response:
        """The token builders use to fetch the project's private repositories (sealed at
        rest, never shown again)."""
        found = await deps.projects.project_by_ref(project)
        await service.set_git_token(found.id, body.token)
        return Response(status_code=204)

    @api.delete("/projects/{project}/git-token", status_code=204, dependencies=[Depends(admin)])
    async def delete_git_token(project: ProjectRef) -> Response:
        found = await deps.projects.project_by_ref(project)
        await service.set_git_token(found.id, None)
        return Response(status_code=204)

    @api.get("/builds", dependencies=[Depends(admin)])
    async def list_builds(
        project: Annotated[str | None, Query(max_length=200, description="id or slug")] = None,
        state: BuildState | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> list[BuildOut]:
        """Newest first."""
        project_id = None
        if project is not None:
            project_id = (await deps.projects.project_by_ref(project)).id
        builds = await deps.builds.recent(project_id=project_id, state=state, limit=limit)
        return [build_out(b) for b in builds]

    @api.get("/builds/{build_id}", dependencies=[Depends(admin)])
    async def get_build(build_id: uuid.UUID) -> BuildOut:
        return build_out(await deps.builds.get(build_id))

    @api.post("/builds/{build_id}/cancel", dependencies=[Depends(admin)])
    async def cancel_build(build_id: uuid.UUID) -> BuildOut:
        """A queued build is cancelled at once, a running one stopped by its builder
        (``cancel_requested``); a finished build is left as it is."""
        return build_out(await service.cancel(build_id))

    @api.get(
        "/builds/{build_id}/logs",
        dependencies=[Depends(admin)],
        response_model=list[BuildLogChunk],
        responses={200: {"content": {SSE_MEDIA_TYPE: {}}}},
    )
    async def build_logs(
        build_id: uuid.UUID,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        follow: bool = False,
    ) -> Response:
        """The kept output (the newest ~1 MiB) in chunks after ``after``; with
        ``follow=true`` Server-Sent Events (``id:`` the chunk's seq, ``data:`` its JSON)
        while the build runs, then one ``event: end`` with the finished build."""
        await deps.builds.get(build_id)  # 404 first
        if not follow:
            chunks = await deps.builds.logs_after(build_id, after, limit=1000)
            return Response(
                content=_CHUNKS.dump_json([chunk_out(c) for c in chunks]),
                media_type="application/json",
            )
        return StreamBody(
            _follow(deps, build_id, after),
            media_type=SSE_MEDIA_TYPE,
            stopping=deps.stopping,
            what="build-logs",
        )

    @api.head(
        "/build-contexts/{sha256}",
        dependencies=[Depends(admin)],
        responses={404: {"description": "not uploaded"}},
    )
    async def has_context(sha256: Sha256) -> Response:
        """200 when the operator has this context (no need to upload it again), else 404."""
        found = await service.context(sha256)
        if found is None:
            return Response(status_code=404)
        return Response(status_code=200, headers={"X-Context-Size": str(found.size)})

    @api.put(
        "/build-contexts/{sha256}",
        dependencies=[Depends(admin)],
        status_code=201,
        responses={200: {"model": ContextOut, "description": "already uploaded"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def put_context(sha256: Sha256, request: Request, response: Response) -> ContextOut:
        """Upload a build context (a tar or tar.gz, streamed). Its sha256 must be the
        path's (422 else); over ``ZEITWORK_BUILD_CONTEXT_MAX_BYTES`` 413; a member outside
        the context, a device or a link out 422."""
        _archive_body(request)
        found, created = await service.put_context(
            sha256, request.stream(), declared=_declared(request)
        )
        if not created:
            response.status_code = 200
        return ContextOut(sha256=found.sha256, size=found.size, created=created)

    # -- builders ----------------------------------------------------------------------------

    @api.post(
        "/builder/lease",
        dependencies=[Depends(builder)],
        responses={200: {"model": BuildJob}, 204: {"description": "nothing to build"}},
    )
    async def lease(
        body: LeaseRequest,
        wait: Annotated[float, Query(ge=0, le=MAX_LEASE_WAIT)] = 0,
    ) -> Response:
        """Take the oldest runnable build under a lease (renew it before
        ``lease_expires_at``); with ``wait``, long-poll that many seconds for one."""
        known: int | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            leased = await service.lease(owner=body.owner, builder_version=body.builder_version)
            if leased is not None:
                build = leased.build
                assert build.lease_token is not None and build.lease_expires_at is not None
                job = BuildJob(
                    build=build_out(build),
                    lease_token=build.lease_token,
                    lease_expires_at=build.lease_expires_at,
                    lease_seconds=service.lease_seconds,
                    cache_key_settings={
                        "git_path": build.git_path,
                        "dockerfile": build.dockerfile,
                        "build_args": build.build_args,
                    },
                    git_token=leased.git_token,
                    project_slug=build.project_slug,
                    reuse_image_id=leased.reuse_image_id,
                    push_to=push_target(deps, build),
                )
                return Response(content=job.model_dump_json(), media_type="application/json")
            remaining = deadline - loop.time()
            if remaining <= 0 or deps.stopping.is_set():
                return Response(status_code=204)
            known = await service.wait_for_work(known, min(remaining, 5.0))

    @api.post("/builder/builds/{build_id}/renew", dependencies=[Depends(builder)])
    async def renew(build_id: uuid.UUID, body: LeaseRef) -> LeaseRenewed:
        """Extend the lease (409 when it is not held); says whether a cancel was asked."""
        build = await service.renew(build_id, body.lease_token)
        assert build.lease_expires_at is not None
        return LeaseRenewed(
            lease_expires_at=build.lease_expires_at,
            cancel_requested=build.cancel_requested_at is not None,
        )

    @api.post("/builder/builds/{build_id}/release", dependencies=[Depends(builder)])
    async def give_up(build_id: uuid.UUID, body: LeaseRef) -> BuildOut:
        """Hand the job back (a builder that stops): queued again at once."""
        return build_out(await service.give_up(build_id, body.lease_token))

    @api.post("/builder/builds/{build_id}/logs", dependencies=[Depends(builder)])
    async def append_log(build_id: uuid.UUID, body: LogAppend) -> LeaseRenewed:
        build = await service.append_log(build_id, body.lease_token, body.data)
        assert build.lease_expires_at is not None
        return LeaseRenewed(
            lease_expires_at=build.lease_expires_at,
            cancel_requested=build.cancel_requested_at is not None,
        )

    @api.post("/builder/builds/{build_id}/resolved", dependencies=[Depends(builder)])
    async def resolved(build_id: uuid.UUID, body: ResolveRequest) -> ResolveOut:
        """The commit the ref resolved to; answers an earlier build's image to reuse when
        that commit was built with the same settings."""
        build, reuse = await service.resolved(build_id, body.lease_token, body.git_commit)
        assert build.cache_key is not None
        return ResolveOut(cache_key=build.cache_key, reuse_image_id=reuse)

    @api.post("/builder/builds/{build_id}/finish", dependencies=[Depends(builder)])
    async def finish(build_id: uuid.UUID, body: BuildFinish) -> BuildOut:
        """Finish under the lease, exactly once (409 when the lease is not held)."""
        build = await service.finish(
            build_id,
            body.lease_token,
            state=BuildState(body.state),
            image_id=body.image_id,
            git_commit=body.git_commit,
            stack=body.stack,
            port=body.port,
            error=body.error,
            failed_step=body.failed_step,
            durations=body.durations,
        )
        return build_out(build)

    @api.get(
        "/builder/builds/{build_id}/context",
        dependencies=[Depends(builder)],
        response_class=FileResponse,
        responses={200: {"content": {"application/x-tar": {}}}},
    )
    async def download_context(build_id: uuid.UUID, lease_token: uuid.UUID) -> FileResponse:
        """The uploaded context of a build this builder holds."""
        path = await service.context_path(build_id, lease_token)
        return FileResponse(path, media_type="application/x-tar")

    @api.post(
        "/builder/builds/{build_id}/image",
        dependencies=[Depends(builder)],
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def upload_image(
        build_id: uuid.UUID,
        lease_token: uuid.UUID,
        request: Request,
        response: Response,
    ) -> ImportedImage:
        """The built image (an oci-archive or docker-archive), imported like ``POST
        /images/import``, for a build this builder holds."""
        _archive_body(request)
        build = await deps.builds.get(build_id)
        if build.lease_token != lease_token or build.state is not BuildState.RUNNING:
            await service.renew(build_id, lease_token)  # raises the lease's 409
        name = f"{build.project_slug}:build-{str(build.id)[:8]}"
        image, created = await deps.image_service.import_archive(name, request.stream())
        if not created:
            response.status_code = 200
        return ImportedImage(id=image.id, digest=image.digest, created=created)

    @api.post("/builder/builds/{build_id}/pushed", dependencies=[Depends(builder)], status_code=201)
    async def pushed_image(build_id: uuid.UUID, body: PushedImage) -> ImportedImage:
        """The image this builder pushed to the job's ``push_to``, by digest: the operator
        reads its manifest from the platform registry (404 when it is not there) and
        catalogues it as an image by reference, for a build this builder holds."""
        build = await deps.builds.get(build_id)
        if build.lease_token != body.lease_token or build.state is not BuildState.RUNNING:
            await service.renew(build_id, body.lease_token)  # raises the lease's 409
        target = push_target(deps, build)
        if target is None:
            raise InvalidInput("this operator takes the build's image as an archive upload")
        ref = parse_reference(body.reference)
        if ref.name != target.repository or ref.tag != target.tag or ref.digest is None:
            raise InvalidInput(
                f"the image must be {target.repository}:{target.tag}@sha256:<digest>",
                extra={"reference": body.reference[:200]},
            )
        image = await deps.image_service.resolve_reference(str(ref))
        return ImportedImage(id=image.id, digest=image.digest, created=True)

    return api


async def _follow(deps: Deps, build_id: uuid.UUID, after: int) -> AsyncIterator[bytes]:
    yield sse_retry(1000)
    async for batch in deps.build_service.follow_logs(
        build_id, after=after, keepalive=KEEPALIVE_SECONDS
    ):
        if not batch:
            yield sse_comment()
            continue
        yield b"".join(
            sse_event(chunk_out(c).model_dump_json(), event_id=str(c.seq)) for c in batch
        )
    final = await deps.builds.get(build_id)
    yield sse_event(build_out(final).model_dump_json(), event="end")
