"""The operator's content-addressed store of OCI image archives.

Layout under ``root``::

    sha256/<hex>     one validated OCI archive per image, named by its MANIFEST digest
    tmp/             uploads in progress (removed on failure; stale ones by ``clean_temp``)

The key is the image manifest's digest (what ``buildah``/``skopeo``/registries call the
image digest), not the digest of the archive bytes: two archives of the same image (tar
timestamps differ) are one image. The stored archive is the uploaded file itself, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import secrets
import shutil
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from zeitwork.core.errors import InvalidInput, NotFound, PayloadTooLarge, ServiceUnavailable
from zeitwork.core.files import commit_file
from zeitwork.images.config import ImageConfig
from zeitwork.images.digests import is_hex, parse_digest
from zeitwork.images.layout import convert_docker_archive, inspect_archive, is_docker_archive

_WRITE_BATCH = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredImage:
    """A validated image in the store.

    ``digest``: ``sha256:<hex>`` of the image manifest (the image's identity).
    ``size``: bytes of the stored archive (what ``GET .../archive`` sends).
    ``unpacked_size``: sum of the layers' file sizes (an estimate of the unpacked tree).
    """

    digest: str
    size: int
    config: ImageConfig
    layers: int
    unpacked_size: int
    path: Path


class ArchiveStore:
    """Validated OCI archives on local disk, one file per image digest.

    All methods are safe to call from several tasks; the blocking ones are cheap (a
    ``stat`` or an ``unlink``). Importing goes through ``import_archive``.
    """

    def __init__(self, *, root: Path) -> None:
        self.root = root
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        for directory in (root, self._blobs, self._tmp):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        """Where the archive of ``digest`` lives (whether or not it exists)."""
        return self._blobs / parse_digest(digest)

    def contains(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def open_archive(self, digest: str) -> Path:
        """The path of a stored archive, to stream it out; ``NotFound`` if absent."""
        path = self.path_for(digest)
        if not path.is_file():
            raise NotFound(f"image archive {digest} is not in the store")
        return path

    def size_of(self, digest: str) -> int:
        return self.open_archive(digest).stat().st_size

    def delete(self, digest: str) -> bool:
        """Remove an archive; ``True`` if it was there (idempotent)."""
        try:
            self.path_for(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def digests(self) -> list[str]:
        """Every stored image digest, sorted."""
        return sorted("sha256:" + p.name for p in self._blobs.iterdir() if is_hex(p.name))

    async def inspect(self, digest: str) -> StoredImage:
        """Re-validate a stored archive and return its details (e.g. after a restart)."""
        path = self.open_archive(digest)
        info = await asyncio.to_thread(inspect_archive, path, expected_digest=digest)
        return StoredImage(
            digest=info.digest,
            size=path.stat().st_size,
            config=info.config,
            layers=len(info.layers),
            unpacked_size=info.unpacked_size,
            path=path,
        )

    def clean_temp(self, *, older_than: float = 3600.0) -> int:
        """Remove uploads left by a crash that are older than ``older_than`` seconds."""
        removed = 0
        limit = time.time() - older_than
        for path in self._tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
        return removed

    def new_temp(self) -> Path:
        """A fresh, unique path under the store's temp dir (same file system)."""
        return self._tmp / f"upload-{secrets.token_hex(8)}"

    def _from_docker_archive(self, upload: Path) -> Path:
        """Blocking: the OCI archive converted from a docker-archive upload (which goes)."""
        converted = self.new_temp()
        work = self.new_temp()
        work.mkdir()
        try:
            convert_docker_archive(upload, converted, work)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                converted.unlink()
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                upload.unlink()
        return converted

    def commit(self, temp: Path) -> StoredImage:
        """Blocking: validate the archive at ``temp`` and move it into place (or drop it if
        the image is already stored). ``temp`` is gone afterwards, whatever happens."""
        try:
            if is_docker_archive(temp):
                temp = self._from_docker_archive(temp)
            info = inspect_archive(temp)
            target = self.path_for(info.digest)
            size = temp.stat().st_size
            if target.exists():
                temp.unlink()
            else:  # the upload stays in tmp/ (swept by clean_temp) until it is valid
                commit_file(temp, target, mode=0o600)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        return StoredImage(
            digest=info.digest,
            size=size,
            config=info.config,
            layers=len(info.layers),
            unpacked_size=info.unpacked_size,
            path=target,
        )


async def import_archive(
    chunks: AsyncIterable[bytes], *, store: ArchiveStore, max_bytes: int
) -> StoredImage:
    """Stream an OCI image archive into the store, validate it, keep it by manifest digest.

    ``chunks`` is the request body (e.g. Starlette's ``request.stream()``). Memory stays
    constant: chunks are written to a temp file under the store in 1 MiB batches, then the
    archive is validated in a worker thread (``inspect_archive``).

    Raises ``PayloadTooLarge`` past ``max_bytes`` and ``InvalidInput`` for anything that is
    not a valid OCI archive of one linux/amd64 image; in every failure (also cancellation)
    nothing is left behind. Importing an image that is already stored returns it again.
    """
    temp = store.new_temp()
    committed = False
    try:
        handle = await asyncio.to_thread(temp.open, "xb")
        try:
            size = 0
            batch = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"the image archive is larger than the limit of {max_bytes} bytes",
                        extra={"limit": max_bytes},
                    )
                batch += chunk
                if len(batch) >= _WRITE_BATCH:
                    data = bytes(batch)
                    batch.clear()
                    await asyncio.to_thread(handle.write, data)
            if batch:
                await asyncio.to_thread(handle.write, bytes(batch))
        finally:
            await asyncio.to_thread(handle.close)
        if size == 0:
            raise InvalidInput("the request body is empty; expected an OCI image archive")
        image = await asyncio.to_thread(store.commit, temp)
        committed = True
        return image
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ServiceUnavailable(
                "no space left in the image store; free space or raise the quota",
                retry_after=60,
            ) from exc
        raise
    finally:
        if not committed:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
