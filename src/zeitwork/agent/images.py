"""Images on the node: the unpacked-image cache fed by downloads from the operator."""

from __future__ import annotations

from pathlib import Path

from zeitwork.clients.operator import OperatorClient
from zeitwork.core.errors import NotFound, ServiceUnavailable
from zeitwork.images import ImageCache, UnpackedImage
from zeitwork.wire.agent import ImageRef


class NodeImages:
    """``ensure`` an image by digest (download from the operator once, verify, unpack) and
    ``release`` it when an instance no longer uses it."""

    def __init__(self, *, cache: ImageCache, operator: OperatorClient | None) -> None:
        self.cache = cache
        self.operator = operator

    async def ensure(self, image: ImageRef) -> UnpackedImage:
        async def fetch(dest: Path) -> None:
            if self.operator is None:
                raise ServiceUnavailable(
                    f"image {image.digest} is not cached and no operator is configured"
                )
            await self.operator.download_image(image.id, dest, expected_digest=image.digest)

        return await self.cache.ensure(image.digest, fetch)

    def adopt(self, digest: str) -> UnpackedImage | None:
        """Take a reference for a re-adopted instance (None if the image is not cached)."""
        try:
            return self.cache.acquire(digest)
        except NotFound:
            return None

    def release(self, digest: str) -> None:
        self.cache.release(digest)
