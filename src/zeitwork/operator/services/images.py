"""Image use cases: import an OCI archive (validated, content-addressed) and catalogue it;
pull an image by registry reference into the same store; delete it (row, then the archive
when no live row uses its digest); find its archive.

``resolve_reference`` is the operator half of images by reference: the tag is resolved to a
digest once (a release pins it), the platform's manifest chosen from an index, and, as long
as nodes cannot fetch from a registry themselves, the image's blobs are pulled through the
registry client (each verified while read) and written as an OCI archive into the archive
store, where ``inspect_archive`` validates it like an upload.

With a platform registry (``ZEITWORK_REGISTRY_URL``) every image the operator catalogues,
imported or pulled, is also pushed there by digest and its location recorded on the row
(``config.registry_location``); nodes then pull it from the registry themselves with the
grant ``pull_grant`` gives them (a short-lived pull token, a read-only account, or none for
an anonymous registry; never the operator's own credentials). An image catalogued before
the registry was configured, or while it was down, is pushed the first time a node asks
for it. Without a platform registry nodes download the archive from the operator.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from zeitwork.clients.registry import RegistryClient, RegistryCredentials
from zeitwork.core.errors import InvalidInput, NotFound, PayloadTooLarge, ZeitworkError
from zeitwork.images import ArchiveStore, import_archive
from zeitwork.images.layout import extract_image_blobs, write_oci_archive
from zeitwork.images.manifests import (
    LINUX_AMD64,
    ImageIndex,
    ImageManifest,
    Platform,
    parse_manifest,
    select_platform,
)
from zeitwork.images.platform_registry import PlatformRegistry, parse_registry_url
from zeitwork.images.reference import ImageReference, _check_registry, parse_reference
from zeitwork.operator.db.images import (
    Image,
    ImageStore,
    RegistryCredential,
    RegistryCredentialStore,
)
from zeitwork.operator.secret_box import SecretBox

if TYPE_CHECKING:
    from zeitwork.operator.settings import OperatorSettings

log = structlog.get_logger("zeitwork.operator.images")

OCI_ARCHIVE = "application/vnd.oci.image.layout.v1+tar"


_PARALLEL_BLOBS = 4
_CHUNKED_PUSH = 16 * 1024 * 1024  # blobs above this are pushed in PATCH chunks of it
LOCATION = "registry_location"  # the key of the image's location in its config


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """The platform registry and the credentials around it (from the settings)."""

    registry: PlatformRegistry
    push: RegistryCredentials | None = None
    pull: RegistryCredentials | None = None

    @classmethod
    def of(cls, settings: OperatorSettings) -> PlatformSettings | None:
        if not settings.registry_url:
            return None

        def pair(user: str, secret: object) -> RegistryCredentials | None:
            if not user or secret is None:
                return None
            return RegistryCredentials(user, secret.get_secret_value())  # type: ignore[attr-defined]

        return cls(
            registry=parse_registry_url(settings.registry_url),
            push=pair(settings.registry_username, settings.registry_password),
            pull=pair(settings.registry_pull_username, settings.registry_pull_password),
        )


@dataclass(frozen=True, slots=True)
class PullTicket:
    """What a node needs to pull an image from the platform registry itself; ``location``
    is None when it must download the archive from the operator (``reason`` says why)."""

    image_id: uuid.UUID
    digest: str
    location: str | None = None
    plain_http: bool = False
    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    expires_in: int | None = None
    reason: str | None = None


def normalise_registry(text: str) -> str:
    """``Reg.Example.com:5000`` → ``reg.example.com:5000``; ``InvalidInput`` if it is not
    a registry host (a reference's first component)."""
    value = text.strip()
    if not value or "/" in value or any(c.isspace() for c in value):
        raise InvalidInput(f"registry {value[:100]!r}: write the host[:port] alone")
    return _check_registry(value, f"registry {value[:100]}")


def location_of(image: Image) -> str | None:
    value = image.config.get(LOCATION)
    return value if isinstance(value, str) and value else None


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
        publish: PlatformSettings | None = None,
        credentials: RegistryCredentialStore | None = None,
        secret_box: SecretBox | None = None,
    ) -> None:
        self._images = images
        self._archives = archives
        self._max_bytes = max_bytes
        self._registry = registry
        self._platform = platform
        self._publish_to = publish if registry is not None else None
        self._publishing: dict[str, asyncio.Lock] = {}
        self._credentials = credentials if secret_box is not None else None
        self._box = secret_box
        if self._publish_to is not None and self._publish_to.registry.plain_http:
            assert registry is not None
            registry.allow_plain_http(self._publish_to.registry.host)

    @property
    def platform_registry(self) -> PlatformRegistry | None:
        return None if self._publish_to is None else self._publish_to.registry

    async def resolve_reference(
        self,
        text: str,
        project: str | None = None,
        *,
        credentials: RegistryCredentials | None = None,
    ) -> Image:
        """The ready image row for a registry reference (``registry/repo:tag`` or
        ``...@sha256:...``); its digest is the platform manifest's. Pulled into the archive
        store unless that digest is there already. ``project`` (slug or id): its stored
        credentials for the reference's registry are used. ``InvalidInput`` for a bad
        reference or image, ``NotFound``/``AuthenticationRequired``/``ServiceUnavailable``
        from the registry, ``PayloadTooLarge`` past the image size limit."""
        ref = parse_reference(text)
        if self._registry is None:
            raise InvalidInput("this operator has no registry client; import the image instead")
        if credentials is None and project is not None:
            credentials = await self.project_credentials(project, ref.registry)
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
        held = self._publish_to is not None and self._publish_to.registry.holds(ref)
        return await self._try_publish(image, pinned if held else None)

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
        return await self._try_publish(image), created

    # -- per-project registry credentials ------------------------------------------------------

    def _credential_store(self) -> tuple[RegistryCredentialStore, SecretBox]:
        if self._credentials is None or self._box is None:
            raise InvalidInput("this operator keeps no registry credentials (no secrets key)")
        return self._credentials, self._box

    async def project_credentials(self, project: str, registry: str) -> RegistryCredentials | None:
        """The credentials project ``project`` stored for ``registry`` (opened), or None."""
        if self._credentials is None or self._box is None:
            return None
        found = await self._credentials.find(project, registry)
        if found is None:
            return None
        return RegistryCredentials(found.username, self._box.open(found.password_sealed))

    async def set_credentials(
        self, project_id: uuid.UUID, registry: str, username: str, password: str
    ) -> tuple[RegistryCredential, bool]:
        """Store (sealed) the user name and password for ``registry`` (``host[:port]``)."""
        store, box = self._credential_store()
        host = normalise_registry(registry)
        saved, created = await store.put(project_id, host, username, box.seal(password))
        log.info(
            "registry_credentials.set", project_id=str(project_id), registry=host, created=created
        )
        return saved, created

    async def list_credentials(self, project_id: uuid.UUID) -> list[RegistryCredential]:
        store, _box = self._credential_store()
        return await store.list_for(project_id)

    async def delete_credentials(self, project_id: uuid.UUID, registry: str) -> None:
        store, _box = self._credential_store()
        host = normalise_registry(registry)
        await store.delete(project_id, host)
        log.info("registry_credentials.deleted", project_id=str(project_id), registry=host)

    # -- the platform registry ---------------------------------------------------------------

    async def _try_publish(self, image: Image, held: ImageReference | None = None) -> Image:
        """``publish``, but a registry that fails leaves the image as it is (catalogued,
        served from the archive store, pushed when a node first asks for it)."""
        if self._publish_to is None or location_of(image) is not None:
            return image
        try:
            return await self.publish(image, held)
        except ZeitworkError as exc:
            log.warning(
                "image.publish_failed",
                image_id=str(image.id),
                digest=image.digest,
                error=exc.detail,
            )
            return image

    async def publish(self, image: Image, held: ImageReference | None = None) -> Image:
        """Push ``image`` to the platform registry by digest (unless it is there: ``held``,
        a reference into it) and record the location on its row; the image as updated."""
        if self._publish_to is None or self._registry is None:
            return image
        if location_of(image) is not None or image.digest is None:
            return image
        digest = image.digest
        lock = self._publishing.setdefault(digest, asyncio.Lock())
        async with lock:
            current = await self._images.get(image.id)
            if location_of(current) is not None:
                return current
            if held is not None:
                target = ImageReference(held.registry, held.repository, None, digest)
            else:
                target = self._publish_to.registry.reference(image.name, digest)
                await self._push(target, digest)
            updated = await self._images.set_location(image.id, str(target))
        self._publishing.pop(digest, None)
        log.info("image.published", image_id=str(image.id), location=str(target))
        return updated

    async def _push(self, target: ImageReference, digest: str) -> None:
        assert self._registry is not None and self._publish_to is not None
        registry, credentials = self._registry, self._publish_to.push
        work = self._archives.new_temp()
        limit = asyncio.Semaphore(_PARALLEL_BLOBS)

        async def push(path: Path, size: int) -> None:
            async with limit:
                await registry.push_blob(
                    target,
                    path,
                    credentials=credentials,
                    chunk_size=_CHUNKED_PUSH if size > _CHUNKED_PUSH else None,
                )

        try:
            archive = self._archives.open_archive(digest)
            blobs = await asyncio.to_thread(extract_image_blobs, archive, digest=digest, dest=work)
            try:
                async with asyncio.TaskGroup() as group:
                    for _digest, size, path in blobs.blobs:
                        group.create_task(push(path, size))
            except BaseExceptionGroup as failed:
                raise _first_error(failed) from None
            await registry.push_manifest(
                target, blobs.manifest, blobs.media_type, credentials=credentials
            )
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)

    async def pull_grant(self, image_id: uuid.UUID, *, ttl: int = 900) -> PullTicket:
        """How a node gets ``image_id``: from the platform registry (pushed now if it is
        not there yet) with a credential that can only pull, or from the operator."""
        image = await self._images.get(image_id)
        if image.digest is None:
            raise NotFound(f"image {image_id} has no content (status {image.status.value})")
        digest = image.digest
        if self._publish_to is None or self._registry is None:
            return PullTicket(image_id, digest, reason="this operator has no platform registry")
        try:
            image = await self.publish(image)
        except ZeitworkError as exc:  # the registry is down: the node takes the archive
            log.warning("image.publish_failed", image_id=str(image.id), error=exc.detail)
            return PullTicket(
                image_id, digest, reason=f"the platform registry failed: {exc.detail}"
            )
        location = location_of(image)
        assert location is not None and image.digest is not None
        ref = parse_reference(location)
        plain = self._registry.is_plain_http(ref.endpoint)
        platform = self._publish_to
        if platform.pull is not None:  # a read-only account: bearer or basic, it can only pull
            return PullTicket(
                image.id,
                image.digest,
                location,
                plain_http=plain,
                username=platform.pull.username,
                password=platform.pull.password,
            )
        kind, token = await self._registry.pull_access(ref, credentials=platform.push)
        if kind == "anonymous":
            return PullTicket(image.id, image.digest, location, plain_http=plain)
        if kind == "bearer":
            return PullTicket(
                image.id, image.digest, location, plain_http=plain, token=token, expires_in=ttl
            )
        return PullTicket(
            image.id,
            image.digest,
            reason="the platform registry wants basic credentials and no read-only account "
            "is set (ZEITWORK_REGISTRY_PULL_USERNAME/PASSWORD); the operator's own are "
            "never handed to nodes",
        )

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
