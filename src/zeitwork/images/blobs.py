"""The node's blob store: image blobs (configs and layers) by digest, fetched once each.

Layout under ``root``::

    sha256/<hex>   a complete blob (verified by the fetch that wrote it); its mtime = last use
    tmp/           downloads in progress (emptied on open)

A layer two images share is fetched once: ``ensure`` finds it here, and concurrent calls
for one digest share one download (single flight). A blob appears under ``sha256/`` only
complete (downloaded to ``tmp/``, size checked, then renamed). ``prune`` removes the least
recently used blobs beyond ``max_bytes``, never those named in ``keep`` (in use by a pull).
The unpacked images in the ``ImageCache`` do not need their blobs: these are kept only so
that the next image with the same layers does not fetch them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import structlog

from zeitwork.core.errors import InvalidInput
from zeitwork.core.files import commit_file
from zeitwork.images.digests import is_hex, parse_digest

log = structlog.get_logger(__name__)

FetchBlob = Callable[[Path], Awaitable[object]]
"""Writes the blob to the given path (which must not exist), verifying its sha256."""


class BlobStore:
    def __init__(self, *, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._blobs = root / "sha256"
        self._tmp = root / "tmp"
        self._pending: dict[str, asyncio.Task[Path]] = {}
        self.fetched: list[str] = []  # digests downloaded by this process, in order
        for directory in (root, self._blobs, self._tmp):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink()

    def path(self, digest: str) -> Path:
        return self._blobs / parse_digest(digest)

    def has(self, digest: str, size: int | None = None) -> bool:
        try:
            stat = self.path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or stat.st_size == size

    async def ensure(self, digest: str, size: int, fetch: FetchBlob) -> Path:
        """The path of blob ``digest`` (``size`` bytes), fetched with ``fetch`` unless it is
        here; concurrent calls for one digest share one fetch."""
        path = self.path(digest)
        if await asyncio.to_thread(self.has, digest, size):
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
            return path
        task = self._pending.get(digest)
        if task is None:
            task = asyncio.create_task(
                self._fetch(digest, size, fetch), name=f"blob-{digest[7:19]}"
            )
            self._pending[digest] = task
            task.add_done_callback(lambda done: self._forget(digest, done))
        return await asyncio.shield(task)

    def _forget(self, digest: str, task: asyncio.Task[Path]) -> None:
        if self._pending.get(digest) is task:
            del self._pending[digest]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters got it

    async def _fetch(self, digest: str, size: int, fetch: FetchBlob) -> Path:
        hexdigest = parse_digest(digest)
        partial = self._tmp / f"{hexdigest}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            await fetch(partial)
            got = (await asyncio.to_thread(partial.stat)).st_size
            if got != size:
                raise InvalidInput(f"blob {digest} has {got} bytes, its descriptor says {size}")
            target = self._blobs / hexdigest
            # not fsynced, as before: a blob torn by a power cut fails has()'s size check
            # (fetched again) or the digest check of the unpack that reads it
            await asyncio.to_thread(commit_file, partial, target, durable=False)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.shield(asyncio.to_thread(partial.unlink))
            raise
        self.fetched.append(digest)
        log.info(
            "blob_store.fetched",
            digest=digest,
            size=size,
            seconds=round(time.monotonic() - started, 3),
        )
        return target

    def discard(self, digests: Iterable[str]) -> list[str]:
        """Blocking: remove these blobs (not those being fetched): after the image they
        make up failed its verification, so that the next pull fetches them again."""
        removed = []
        for digest in digests:
            if digest in self._pending:
                continue
            with contextlib.suppress(FileNotFoundError):
                self.path(digest).unlink()
                removed.append(digest)
        if removed:
            log.warning("blob_store.discarded", blobs=removed)
        return removed

    def used_bytes(self) -> int:
        total = 0
        for entry in self._blobs.iterdir():
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
        return total

    def prune(self, *, keep: Iterable[str] = ()) -> list[str]:
        """Blocking: remove least recently used blobs until at most ``max_bytes`` remain;
        the digests in ``keep`` and those being fetched stay. Returns the removed digests."""
        spared = {parse_digest(d) for d in keep} | {parse_digest(d) for d in self._pending}
        entries = []
        for entry in self._blobs.iterdir():
            with contextlib.suppress(FileNotFoundError):
                stat = entry.stat()
                entries.append((stat.st_mtime_ns, entry, stat.st_size))
        used = sum(size for _mtime, _entry, size in entries)
        removed = []
        for _mtime, entry, size in sorted(entries, key=lambda item: item[0]):
            if used <= self.max_bytes:
                break
            if entry.name in spared or not is_hex(entry.name):
                continue
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            used -= size
            removed.append("sha256:" + entry.name)
        if removed:
            log.info("blob_store.pruned", blobs=len(removed), kept_bytes=used)
        return removed
