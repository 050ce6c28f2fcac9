"""Images on the node: the unpacked-image cache, fed from the platform registry (each blob
fetched once into the node's blob store, a layer shared by two images fetched once) or,
when the operator has no platform registry, by downloading the archive from the operator.

With ``pull_from_registry`` the agent asks the operator for a pull grant
(``GET /images/{id}/pull``): the image's location in the platform registry and a credential
that can only pull (a short-lived token, a read-only account, or none). The manifest is
fetched by digest (so it must be the release's bytes) and the config blob read. With the
layer store (root), each layer the node lacks is streamed into the blob store
(sha256-verified while read) and unpacked into the layer store as soon as it is there,
several layers at once, each checked against its diff id while unpacked; the layers the
node has are neither fetched nor unpacked. Without it (rootless), the verified blobs are
handed to the cache as an OCI archive, which checks them all again and unpacks the whole
image. A grant without a location, or an operator that has no such route, means: download
the archive.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from zeitwork.clients.operator import OperatorClient
from zeitwork.clients.registry import (
    FetchedManifest,
    RegistryClient,
    RegistryCredentials,
    registry_http_client,
)
from zeitwork.core.errors import InvalidInput, NotFound, ServiceUnavailable
from zeitwork.images import ImageCache, UnpackedImage
from zeitwork.images import manifests as m
from zeitwork.images.blobs import BlobStore
from zeitwork.images.cache import LayerBlob, PulledImage
from zeitwork.images.layout import write_oci_archive
from zeitwork.images.reference import ImageReference, parse_reference
from zeitwork.wire.agent import ImageRef

log = structlog.get_logger("zeitwork.agent.images")

_PARALLEL_BLOBS = 4


class PullGrant(BaseModel):
    """The operator's answer to ``GET /images/{id}/pull`` (see ``operator.api.images``)."""

    digest: str
    location: str | None = None
    plain_http: bool = False
    token: str | None = None
    username: str | None = None
    password: str | None = None
    reason: str | None = None

    def __repr__(self) -> str:  # the credential never shows
        return f"PullGrant(digest={self.digest!r}, location={self.location!r})"


class NodeImages:
    """``ensure`` an image by digest (fetched once, verified, unpacked) and ``release`` it
    when an instance no longer uses it."""

    def __init__(
        self,
        *,
        cache: ImageCache,
        operator: OperatorClient | None,
        pull_from_registry: bool = False,
        blobs: BlobStore | None = None,
    ) -> None:
        self.cache = cache
        self.operator = operator
        self.pull_from_registry = pull_from_registry
        self._blobs = blobs
        self._registry: RegistryClient | None = None
        self._pulled: dict[str, list[str]] = {}  # image digest → the blobs its pull used

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            self._blobs = BlobStore(root=self.cache.root / "blobs", max_bytes=self.cache.max_bytes)
        return self._blobs

    async def ensure(self, image: ImageRef) -> UnpackedImage:
        asked = False
        grant: PullGrant | None = None
        if (
            self.cache.layered
            and self.pull_from_registry
            and self.operator is not None
            and self.cache.get(image.digest) is None
        ):
            grant = await self._grant(image)
            asked = True

        async def fetch(dest: Path) -> None:
            if self.operator is None:
                raise ServiceUnavailable(
                    f"image {image.digest} is not cached and no operator is configured"
                )
            found = grant
            if not asked and self.pull_from_registry:
                found = await self._grant(image)
            if found is None or found.location is None:
                await self.operator.download_image(image.id, dest, expected_digest=image.digest)
                return
            await self.pull(found, dest)

        try:
            if grant is not None and grant.location is not None:
                located = grant

                async def pull() -> PulledImage:
                    return await self.pull_layers(located)

                unpacked = await self.cache.ensure_pulled(image.digest, pull)
            else:
                unpacked = await self.cache.ensure(image.digest, fetch)
        except InvalidInput:
            # the cache refused what the blob store gave it (a blob corrupted on this disk,
            # a layer that is not a valid tar): drop those blobs, the next try fetches them
            used = self._pulled.pop(image.digest, [])
            if used:
                await asyncio.to_thread(self.blobs.discard, used)
            raise
        self._pulled.pop(image.digest, None)
        return unpacked

    async def _grant(self, image: ImageRef) -> PullGrant | None:
        assert self.operator is not None
        try:
            raw = await self.operator.image_pull_grant(image.id)
        except NotFound:
            return None  # an operator without the route (or the image is gone: the download says)
        try:
            grant = PullGrant.model_validate(raw)
        except ValidationError as exc:
            raise InvalidInput(f"image {image.id}: the operator's pull grant is invalid") from exc
        if grant.digest != image.digest:
            raise InvalidInput(
                f"image {image.id}: the operator grants {grant.digest}, expected {image.digest}"
            )
        if grant.location is None:
            log.info("node_images.from_operator", digest=image.digest, reason=grant.reason)
        return grant

    def _client(self, registry: str, *, plain_http: bool) -> RegistryClient:
        if self._registry is None:
            self._registry = RegistryClient(
                http=registry_http_client(read_timeout=120.0),
                accept=m.ACCEPT,
                max_manifest_bytes=m.MAX_MANIFEST_BYTES,
            )
        if plain_http:
            self._registry.allow_plain_http(registry)
        return self._registry

    async def _manifest(
        self, grant: PullGrant
    ) -> tuple[
        RegistryClient, ImageReference, RegistryCredentials | None, m.ImageManifest, FetchedManifest
    ]:
        assert grant.location is not None
        ref = parse_reference(grant.location)
        if ref.digest != grant.digest:
            raise InvalidInput(f"pull grant location {grant.location} is not {grant.digest}")
        client = self._client(ref.endpoint, plain_http=grant.plain_http)
        credentials = None
        if grant.username is not None and grant.password is not None:
            credentials = RegistryCredentials(grant.username, grant.password)
        if grant.token is not None:
            client.use_token(ref, grant.token)
        fetched = await client.get_manifest(ref, credentials=credentials)  # by digest: verified
        manifest = m.parse_manifest(
            fetched.data, fetched.media_type, where=f"manifest {ref}", max_layer_bytes=1 << 40
        )
        if isinstance(manifest, m.ImageIndex):
            raise InvalidInput(f"{ref} is an index, not the image manifest it should be")
        return client, ref, credentials, manifest, fetched

    def _blob_fetcher(
        self,
        client: RegistryClient,
        ref: ImageReference,
        credentials: RegistryCredentials | None,
    ) -> Callable[[str, int], Coroutine[Any, Any, Path]]:
        store = self.blobs
        limit = asyncio.Semaphore(_PARALLEL_BLOBS)

        async def one(digest: str, size: int) -> Path:
            async def download(path: Path) -> object:
                return await client.download_blob(
                    ref, digest, path, size=size, credentials=credentials
                )

            async with limit:
                return await store.ensure(digest, size, download)

        return one

    async def pull_layers(self, grant: PullGrant) -> PulledImage:
        """The granted image's config (read now) and its layers, each fetched into the blob
        store only when the cache asks for it (a layer it has is never fetched)."""
        client, ref, credentials, manifest, _fetched = await self._manifest(grant)
        one = self._blob_fetcher(client, ref, credentials)
        config_path = await one(manifest.config.digest, manifest.config.size)
        config = await asyncio.to_thread(config_path.read_bytes)
        if m.digest_of(config) != manifest.config.digest:  # the stored copy went bad
            await asyncio.to_thread(self.blobs.discard, [manifest.config.digest])
            raise InvalidInput(f"config blob {manifest.config.digest} does not match its sha256")
        wanted = [manifest.config.digest, *(layer.digest for layer in manifest.layers)]
        self._pulled[grant.digest] = wanted

        def source(digest: str, size: int) -> Callable[[], Awaitable[Path]]:
            async def fetch() -> Path:
                return await one(digest, size)

            return fetch

        layers = tuple(
            LayerBlob(layer.digest, layer.size, source(layer.digest, layer.size))
            for layer in manifest.layers
        )
        await asyncio.to_thread(self.blobs.prune, keep=wanted)
        return PulledImage(config=config, layers=layers)

    async def pull(self, grant: PullGrant, dest: Path) -> None:
        """Fetch the granted image's blobs into the blob store (the missing ones) and write
        its OCI archive to ``dest`` (hard links to the stored blobs)."""
        client, ref, credentials, manifest, fetched = await self._manifest(grant)
        media_type = fetched.media_type or manifest.media_type
        wanted = [manifest.config, *(layer.descriptor for layer in manifest.layers)]
        store = self.blobs
        one = self._blob_fetcher(client, ref, credentials)
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(d.digest, d.size)) for d in wanted]
        except BaseExceptionGroup as failed:
            first: BaseException = failed
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        self._pulled[grant.digest] = [d.digest for d in wanted]
        links = dest.parent / "registry-blobs"
        await asyncio.to_thread(_link_all, [t.result() for t in tasks], links)
        try:
            await asyncio.to_thread(
                write_oci_archive, dest, manifest=fetched.data, media_type=media_type, blobs=links
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, links, True)
        await asyncio.to_thread(store.prune, keep=[d.digest for d in wanted])

    def adopt(self, digest: str) -> UnpackedImage | None:
        """Take a reference for a re-adopted instance (None if the image is not cached)."""
        try:
            return self.cache.acquire(digest)
        except NotFound:
            return None

    def release(self, digest: str) -> None:
        self.cache.release(digest)

    async def aclose(self) -> None:
        if self._registry is not None:
            await self._registry.aclose()
            self._registry = None


def _link_all(paths: list[Path], directory: Path) -> None:
    directory.mkdir()
    for path in paths:
        target = directory / path.name
        if target.exists():
            continue
        try:
            os.link(path, target)
        except OSError:  # another file system: copy
            shutil.copyfile(path, target)
