"""Image use cases: import an OCI archive (validated, content-addressed) and catalogue it;
delete it (row, then the archive when no live row uses its digest); find its archive."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterable
from pathlib import Path

import structlog

from zeitwork.core.errors import NotFound
from zeitwork.images import ImageStore as ArchiveStore
from zeitwork.images import import_archive
from zeitwork.operator.db.images import Image, ImageStore

log = structlog.get_logger("zeitwork.operator.images")

OCI_ARCHIVE = "application/vnd.oci.image.layout.v1+tar"


class ImageService:
    def __init__(self, *, images: ImageStore, archives: ArchiveStore, max_bytes: int) -> None:
        self._images = images
        self._archives = archives
        self._max_bytes = max_bytes

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
