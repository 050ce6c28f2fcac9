"""``/api/v1/images``: list, get, delete, import an OCI archive or a docker-archive, download it.

``POST /images/import?name=NAME`` takes the archive as the body (``Content-Type:
application/x-tar``; the size limit is ``ZEITWORK_IMAGE_MAX_BYTES``): an ``oci-archive``, or
a ``docker-archive`` (``docker save``, converted to an OCI archive), validates it and
answers 201 with the image, or 200 with the existing image when one with the same digest
is already catalogued (whatever its name). A corrupt archive gets a 422 problem and leaves
nothing behind. ``GET /images/{id}/archive`` streams the stored archive with ``Digest`` and
``ETag`` headers to an admin, or to a node token whose node has a (not terminated) instance
of that image assigned (else 403). ``GET /images/{id}/pull`` gives such a node what it needs
to pull the image from the platform registry itself (its location and a credential that can
only pull), or ``location: null`` and a reason when it must download the archive.
``POST /images`` (builds from a GitHub repository) is a later
issue: until then it answers 422 pointing at the import route.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse

from zeitwork.core.errors import InvalidInput, PermissionDenied
from zeitwork.core.states import ImageState
from zeitwork.operator.api.convert import image_out, registry_credential_out
from zeitwork.operator.api.pagination import page_params, set_next_link
from zeitwork.operator.api.security import require
from zeitwork.operator.db.pages import PageRequest
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Principal, Scope
from zeitwork.wire.admin import (
    ImageBuild,
    ImageOut,
    PullGrantOut,
    RegistryCredentialIn,
    RegistryCredentialOut,
)

ARCHIVE_TYPES = {"application/x-tar", "application/octet-stream", "application/tar"}


ProjectPath = Annotated[
    str, Path(min_length=1, max_length=200, description="the project's id or slug")
]
RegistryPath = Annotated[
    str, Path(min_length=1, max_length=260, description="the registry host[:port]")
]


def router(deps: Deps) -> APIRouter:
    # one flat router (no prefix): the images, and the registry credentials a project's
    # images are pulled with
    api = APIRouter(tags=["images"])
    admin = require(deps, Scope.ADMIN)
    downloader = require(deps, Scope.NODE)

    @api.get("/images", dependencies=[Depends(admin)])
    async def list_images(
        request: Request,
        response: Response,
        page: Annotated[PageRequest, Depends(page_params)],
        status: Annotated[ImageState | None, Query()] = None,
        name: Annotated[str | None, Query(max_length=255)] = None,
    ) -> list[ImageOut]:
        result = await deps.images.list_page(page, status=status, name=name)
        set_next_link(request, response, result)
        return [image_out(i) for i in result.items]

    @api.post(
        "/images/import",
        status_code=201,
        dependencies=[Depends(admin)],
        responses={200: {"model": ImageOut, "description": "this image was already imported"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-tar": {"schema": {"type": "string", "format": "binary"}}
                },
            }
        },
    )
    async def import_image(
        request: Request,
        response: Response,
        name: Annotated[str, Query(min_length=1, max_length=255, description="image name")],
    ) -> ImageOut:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in ARCHIVE_TYPES:
            raise HTTPException(
                status_code=415,
                detail="send the image archive (oci-archive or docker-archive) with "
                "Content-Type: application/x-tar",
            )
        image, created = await deps.image_service.import_archive(name, request.stream())
        if not created:
            response.status_code = 200
        return image_out(image)

    @api.post("/images", status_code=201, dependencies=[Depends(admin)])
    async def build_image(body: ImageBuild) -> ImageOut:
        # A client error, not a 501: the request is refused for what it asks, the server
        # is not broken, and a client (or a fuzzer) should not retry it.
        raise InvalidInput(
            "builds from source are not available yet; import an archive with "
            "POST /api/v1/images/import?name=NAME (build it yourself with "
            "`buildah push IMAGE oci-archive:FILE`)",
            extra={"github_repo": body.github_repo},
        )

    @api.get("/images/{image_id}", dependencies=[Depends(admin)])
    async def get_image(image_id: uuid.UUID) -> ImageOut:
        return image_out(await deps.images.get(image_id))

    @api.delete("/images/{image_id}", status_code=204, dependencies=[Depends(admin)])
    async def delete_image(image_id: uuid.UUID) -> Response:
        await deps.image_service.delete(image_id)
        return Response(status_code=204)

    async def _node_may_fetch(principal: Principal, image_id: uuid.UUID) -> None:
        if not principal.is_admin and (
            principal.node_id is None
            or not await deps.instances.node_uses_image(principal.node_id, image_id)
        ):
            raise PermissionDenied(
                "a node token may fetch only the images of instances assigned to its node",
                extra={"image_id": str(image_id)},
            )

    @api.get("/images/{image_id}/pull")
    async def pull_grant(
        image_id: uuid.UUID,
        response: Response,
        principal: Principal = Depends(downloader),  # noqa: B008 (as below)
    ) -> PullGrantOut:
        await _node_may_fetch(principal, image_id)
        grant = await deps.image_service.pull_grant(image_id)
        response.headers["Cache-Control"] = "no-store"  # it may carry a credential
        return PullGrantOut(
            image_id=grant.image_id,
            digest=grant.digest,
            location=grant.location,
            plain_http=grant.plain_http,
            token=grant.token,
            username=grant.username,
            password=grant.password,
            expires_in=grant.expires_in,
            reason=grant.reason,
        )

    @api.get(
        "/images/{image_id}/archive",
        response_class=FileResponse,
        responses={200: {"content": {"application/x-tar": {}}}},
    )
    async def download_archive(
        image_id: uuid.UUID,
        principal: Principal = Depends(downloader),  # noqa: B008 (a local: Annotated cannot see it)
    ) -> FileResponse:
        await _node_may_fetch(principal, image_id)
        image, path = await deps.image_service.archive(image_id)
        digest = str(image.digest)
        return FileResponse(
            path,
            media_type="application/x-tar",
            headers={"Digest": digest, "ETag": f'"{digest}"'},
        )

    @api.get("/projects/{project}/registry-credentials", dependencies=[Depends(admin)])
    async def list_registry_credentials(project: ProjectPath) -> list[RegistryCredentialOut]:
        found = await deps.projects.project_by_ref(project)
        rows = await deps.image_service.list_credentials(found.id)
        return [registry_credential_out(row) for row in rows]

    @api.put(
        "/projects/{project}/registry-credentials/{registry}",
        dependencies=[Depends(admin)],
        responses={201: {"model": RegistryCredentialOut, "description": "created"}},
    )
    async def set_registry_credentials(
        project: ProjectPath, registry: RegistryPath, body: RegistryCredentialIn, response: Response
    ) -> RegistryCredentialOut:
        found = await deps.projects.project_by_ref(project)
        saved, created = await deps.image_service.set_credentials(
            found.id, registry, body.username, body.password.get_secret_value()
        )
        if created:
            response.status_code = 201
        return registry_credential_out(saved)

    @api.delete(
        "/projects/{project}/registry-credentials/{registry}",
        status_code=204,
        dependencies=[Depends(admin)],
    )
    async def delete_registry_credentials(project: ProjectPath, registry: RegistryPath) -> Response:
        found = await deps.projects.project_by_ref(project)
        await deps.image_service.delete_credentials(found.id, registry)
        return Response(status_code=204)

    return api
