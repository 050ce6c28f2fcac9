"""Image use cases: import an OCI archive (validated, content-addressed) and catalogue it;
pull an image by registry reference into the same store; delete it (row, then the archive
when no live row uses its digest); find its archive.

``resolve_reference`` is the operator half of images by reference: the tag is resolved to a
digest once (a release pins it), the platform's manifest chosen from an index, and, as long
as nodes cannot fetch from a registry themselves, the image's blobs are pulled through the
registry client (each verified while read) and written as an OCI archive into the archive
store, where ``inspect_archive`` validates it like an upload: nodes download it as today.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterable
from pathlib import Path

import structlog

from zeitwork.clients.registry import RegistryClient, RegistryCredentials
from zeitwork.core.errors import InvalidInput, NotFound, PayloadTooLarge
from zeitwork.images import ImageStore as ArchiveStore
from zeitwork.images import import_archive
from zeitwork.images.layout import write_oci_archive
from zeitwork.images.manifests import (
    LINUX_AMD64,
    ImageIndex,
    ImageManifest,
    Platform,
    parse_manifest,
    select_platform,
)
from zeitwork.images.reference import ImageReference, parse_reference
from zeitwork.operator.db.images import Image, ImageStore

log = structlog.get_logger("zeitwork.operator.images")

OCI_ARCHIVE = "application/vnd.oci.image.layout.v1+tar"


_PARALLEL_BLOBS = 4


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure of parallel downloads (the others are its consequences)."""
    first = group.exceptions[0]
    return _first_error(first) if isinstance(first, BaseExceptionGroup) else first


class ImageService:
    def __init__(
        self,
        *,
        images: ImageStore,
        archives: ArchiveStore,
        max_bytes: int,
        registry: RegistryClient | None = None,
        platform: Platform = LINUX_AMD64,
    ) -> None:
        self._images = images
        self._archives = archives
        self._max_bytes = max_bytes
        self._registry = registry
        self._platform = platform

    async def resolve_reference(
        self, text: str, credentials: RegistryCredentials | None = None
    ) -> Image:
        """The ready image row for a registry reference (``registry/repo:tag`` or
        ``...@sha256:...``); its digest is the platform manifest's. Pulled into the archive
        store unless that digest is there already. ``InvalidInput`` for a bad reference or
        image, ``NotFound``/``AuthenticationRequired``/``ServiceUnavailable`` from the
        registry, ``PayloadTooLarge`` past the image size limit."""
        ref = parse_reference(text)
        if self._registry is None:
            raise InvalidInput("this operator has no registry client; import the image instead")
        manifest, data, media_type = await self._platform_manifest(ref, credentials)
        pinned = ref.pinned(manifest.digest)
        if not self._archives.contains(manifest.digest):
            await self._pull(pinned, manifest, data, media_type, credentials)
        imported = await self._archives.inspect(manifest.digest)
        config = imported.config.to_dict()
        config["layers"] = [
            {"digest": layer.digest, "size": layer.size, "media_type": layer.descriptor.media_type}
            for layer in manifest.layers
        ]
        image, created = await self._images.add_imported(
            name=str(ref),
            digest=manifest.digest,
            size=imported.size,
            media_type=OCI_ARCHIVE,
            config=config,
        )
        log.info(
            "image.resolved",
            image_id=str(image.id),
            reference=str(ref),
            digest=manifest.digest,
            created=created,
        )
        return image

    async def _platform_manifest(
        self, ref: ImageReference, credentials: RegistryCredentials | None
    ) -> tuple[ImageManifest, bytes, str]:
        assert self._registry is not None
        fetched = await self._registry.get_manifest(ref, credentials=credentials)
        parsed = parse_manifest(
            fetched.data,
            fetched.media_type,
            where=f"manifest {ref}",
            max_layer_bytes=self._max_bytes,
        )
        if isinstance(parsed, ImageIndex):
            chosen = select_platform(parsed, self._platform)
            fetched = await self._registry.get_manifest(
                ref.pinned(chosen.digest), credentials=credentials
            )
            parsed = parse_manifest(
                fetched.data,
                fetched.media_type,
                where=f"manifest {chosen.digest} of {ref}",
                max_layer_bytes=self._max_bytes,
            )
            if isinstance(parsed, ImageIndex):
                raise InvalidInput(f"{ref}: an index inside an index is not supported")
        total = parsed.config.size + sum(layer.size for layer in parsed.layers)
        if total > self._max_bytes:
            raise PayloadTooLarge(
                f"image {ref} has {total} bytes of blobs, more than the limit of "
                f"{self._max_bytes} (ZEITWORK_IMAGE_MAX_BYTES)",
                extra={"limit": self._max_bytes},
            )
        media_type = fetched.media_type or str(json.loads(fetched.data).get("mediaType", ""))
        return parsed, fetched.data, media_type or parsed.media_type

    async def _pull(
        self,
        ref: ImageReference,
        manifest: ImageManifest,
        data: bytes,
        media_type: str,
        credentials: RegistryCredentials | None,
    ) -> None:
        """Download every blob (verified), write the OCI archive, commit it (validated)."""
        assert self._registry is not None
        registry = self._registry
        work = self._archives.new_temp()
        blobs = work / "blobs"
        archive = work / "image.tar"
        limit = asyncio.Semaphore(_PARALLEL_BLOBS)

        async def fetch(digest: str, size: int) -> None:
            target = blobs / digest.removeprefix("sha256:")
            async with limit:
                if not await asyncio.to_thread(target.exists):
                    await registry.download_blob(
                        ref, digest, target, size=size, credentials=credentials
                    )

        try:
            await asyncio.to_thread(blobs.mkdir, parents=True)
            descriptors = {manifest.config.digest: manifest.config.size}
            descriptors.update({layer.digest: layer.size for layer in manifest.layers})
            try:
                async with asyncio.TaskGroup() as group:
                    for digest, size in descriptors.items():
                        group.create_task(fetch(digest, size))
            except BaseExceptionGroup as failed:
                raise _first_error(failed) from None
            await asyncio.to_thread(
                write_oci_archive, archive, manifest=data, media_type=media_type, blobs=blobs
            )
            await asyncio.to_thread(shutil.rmtree, blobs)
            imported = await asyncio.to_thread(self._archives.commit, archive)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        if imported.digest != manifest.digest:  # pragma: no cover - commit checks the bytes
            raise InvalidInput(f"{ref}: the pulled archive holds {imported.digest}")
        log.info("image.pulled", reference=str(ref), digest=manifest.digest, size=imported.size)

    async def aclose(self) -> None:
        """Close the registry client's connection pool (``main``, at shut-down)."""
        if self._registry is not None:
            await self._registry.aclose()

    async def import_archive(self, name: str, body: AsyncIterable[bytes]) -> tuple[Image, bool]:
        """(the image, created?): an archive of an image already catalogued returns it."""
        imported = await import_archive(body, store=self._archives, max_bytes=self._max_bytes)
        try:
            image, created = await self._images.add_imported(
                name=name,
                digest=imported.digest,
                size=imported.size,
                media_type=OCI_ARCHIVE,
                config=imported.config.to_dict(),
            )
        except BaseException:
            if await self._unused(imported.digest):
                await asyncio.to_thread(self._archives.delete, imported.digest)
            raise
        log.info(
            "image.imported",
            image_id=str(image.id),
            digest=image.digest,
            size=image.size,
            created=created,
        )
        return image, created

    async def clean_temp(self) -> None:
        removed = await asyncio.to_thread(self._archives.clean_temp)
        if removed:
            log.info("image.temp_removed", files=removed)

    async def _unused(self, digest: str) -> bool:
        try:
            return await self._images.digest_unused(digest)
        except Exception:  # the database is gone too: keep the file (clean-up is safe later)
            return False

    async def delete(self, image_id: uuid.UUID) -> None:
        digest = await self._images.delete(image_id)
        if digest is not None and await self._images.digest_unused(digest):
            await asyncio.to_thread(self._archives.delete, digest)
        log.info("image.deleted", image_id=str(image_id), archive_removed=digest is not None)

    async def archive(self, image_id: uuid.UUID) -> tuple[Image, Path]:
        image = await self._images.get(image_id)
        if image.digest is None:
            raise NotFound(f"image {image_id} has no archive (status {image.status.value})")
        return image, self._archives.open_archive(image.digest)
