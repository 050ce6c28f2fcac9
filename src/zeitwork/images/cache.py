"""The node's cache of unpacked images: one read-only tree per digest, shared by instances.

Layout under ``root``::

    images/<hex>/rootfs/      the unpacked image (umoci raw unpack); never written after
    images/<hex>/image.json   digest, config, resolved user, size; its mtime = last use
    tmp/                      downloads and unpacks in progress (emptied on open)

An image directory appears in ``images/`` only complete (built in ``tmp/``, then renamed),
so a crash never leaves half an image that looks whole. One ``ImageCache`` per root: it
keeps reference counts in memory, so after an agent restart the agent must ``acquire`` the
images of the instances it re-adopts before anything can be evicted (``open`` evicts
nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from zeitwork.core.errors import Conflict, InvalidInput, NotFound, RuntimeFailure
from zeitwork.images import umoci
from zeitwork.images.config import ImageConfig
from zeitwork.images.digests import is_hex, parse_digest
from zeitwork.images.layout import inspect_archive
from zeitwork.images.process import ProcessConfig, build_process
from zeitwork.images.tree import read_confined, tree_size
from zeitwork.images.users import ResolvedUser, resolve_user

log = structlog.get_logger(__name__)

Fetch = Callable[[Path], Awaitable[None]]
"""Writes the image's OCI archive to the given path (the agent's HTTP download)."""

_META = "image.json"
_TAG = "zeitwork"


@dataclass(frozen=True, slots=True)
class UnpackedImage:
    """An image ready to run: its read-only tree, its config and its resolved user.

    ``user_error`` is set (and ``user`` is None) when the image's ``User`` cannot be
    resolved against its own /etc/passwd and /etc/group; ``process()`` then raises it.
    """

    digest: str
    rootfs: Path
    config: ImageConfig
    size: int
    user: ResolvedUser | None
    user_error: str | None = None

    def process(self, env_overrides: Mapping[str, str] | None = None) -> ProcessConfig:
        """argv/env/cwd/uid/gid for an instance; its variables override the image's.

        Raises ``InvalidInput`` if the image has nothing to run, its user does not resolve,
        or a variable name is invalid.
        """
        if self.user is None:
            raise InvalidInput(self.user_error or "the image user cannot be resolved")
        return build_process(self.config, self.user, env_overrides)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached image as ``entries()`` reports it (for status pages and tests)."""

    digest: str
    size: int
    last_used: float
    refs: int


@dataclass(slots=True)
class _Slot:
    image: UnpackedImage
    last_used_ns: int
    refs: int = 0
    meta: Path = field(default_factory=Path)


def _user_of(config: ImageConfig, rootfs: Path) -> tuple[ResolvedUser | None, str | None]:
    try:
        user = resolve_user(
            config.user,
            passwd=read_confined(rootfs, "/etc/passwd") or "",
            group=read_confined(rootfs, "/etc/group") or "",
        )
    except InvalidInput as exc:
        return None, exc.detail
    return user, None


def _meta_json(image: UnpackedImage) -> dict[str, Any]:
    user = image.user
    return {
        "digest": image.digest,
        "size": image.size,
        "config": image.config.to_dict(),
        "user": None
        if user is None
        else {
            "uid": user.uid,
            "gid": user.gid,
            "additional_gids": list(user.additional_gids),
            "name": user.name,
            "home": user.home,
        },
        "user_error": image.user_error,
    }


def _image_from_meta(data: Mapping[str, Any], rootfs: Path) -> UnpackedImage:
    raw_user = data.get("user")
    user = None
    if raw_user is not None:
        user = ResolvedUser(
            uid=int(raw_user["uid"]),
            gid=int(raw_user["gid"]),
            additional_gids=tuple(int(g) for g in raw_user["additional_gids"]),
            name=raw_user["name"],
            home=str(raw_user["home"]),
        )
    return UnpackedImage(
        digest=str(data["digest"]),
        rootfs=rootfs,
        config=ImageConfig.from_dict(data["config"]),
        size=int(data["size"]),
        user=user,
        user_error=data.get("user_error"),
    )


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class ImageCache:
    """Unpacked images by digest, with reference counts and LRU eviction beyond ``max_bytes``.

    Create it with ``await ImageCache.open(root=..., max_bytes=...)``. Use ``ensure`` to get
    an image (downloading and unpacking it once, however many callers ask at the same time)
    and ``release`` when an instance that used it is gone. Images with references are never
    evicted; unused ones are evicted least recently used first whenever the cache holds more
    than ``max_bytes`` (after each unpack, or when ``evict()`` is called).
    """

    def __init__(
        self,
        *,
        root: Path,
        max_bytes: int,
        slots: dict[str, _Slot],
        umoci_binary: str = "umoci",
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._images = root / "images"
        self._tmp = root / "tmp"
        self._slots = slots
        self._pending: dict[str, asyncio.Task[UnpackedImage]] = {}
        self._umoci = umoci_binary
        self._last_ns = 0

    @classmethod
    async def open(cls, *, root: Path, max_bytes: int, umoci_binary: str = "umoci") -> ImageCache:
        """Open (or create) the cache at ``root``; finds the images unpacked earlier and
        removes leftovers of interrupted work. Evicts nothing."""
        if max_bytes <= 0:
            raise InvalidInput("the image cache size must be positive")
        slots = await asyncio.to_thread(cls._scan, root)
        log.info("image_cache.opened", root=str(root), images=len(slots), max_bytes=max_bytes)
        return cls(root=root, max_bytes=max_bytes, slots=slots, umoci_binary=umoci_binary)

    @staticmethod
    def _scan(root: Path) -> dict[str, _Slot]:
        images, tmp = root / "images", root / "tmp"
        for directory in (root, images, tmp):
            directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        for leftover in tmp.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                _remove_tree(leftover)
            else:
                leftover.unlink()
        slots: dict[str, _Slot] = {}
        for directory in images.iterdir():
            meta = directory / _META
            try:
                if not is_hex(directory.name):
                    raise ValueError("not an image directory")
                data = json.loads(meta.read_text())
                image = _image_from_meta(data, directory / "rootfs")
                if image.digest != "sha256:" + directory.name or not image.rootfs.is_dir():
                    raise ValueError("inconsistent image directory")
                last_used = meta.stat().st_mtime_ns
            except (OSError, ValueError, KeyError, TypeError, InvalidInput) as exc:
                log.warning("image_cache.discarded", path=str(directory), reason=str(exc))
                if directory.is_dir() and not directory.is_symlink():
                    _remove_tree(directory)
                else:
                    directory.unlink()
                continue
            slots[image.digest] = _Slot(image=image, last_used_ns=last_used, meta=meta)
        return slots

    # ---- queries -------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return sum(slot.image.size for slot in self._slots.values())

    def get(self, digest: str) -> UnpackedImage | None:
        """The unpacked image if it is cached (no reference taken)."""
        slot = self._slots.get(digest)
        return slot.image if slot is not None else None

    def refs(self, digest: str) -> int:
        slot = self._slots.get(digest)
        return slot.refs if slot is not None else 0

    def entries(self) -> list[CacheEntry]:
        """Cached images, least recently used first."""
        return [
            CacheEntry(d, s.image.size, s.last_used_ns / 1e9, s.refs)
            for d, s in sorted(self._slots.items(), key=lambda kv: kv[1].last_used_ns)
        ]

    # ---- references ----------------------------------------------------------------------

    def _touch(self, slot: _Slot) -> None:
        now = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now
        slot.last_used_ns = now
        with contextlib.suppress(FileNotFoundError):
            os.utime(slot.meta, ns=(now, now))

    def acquire(self, digest: str) -> UnpackedImage:
        """Take a reference on a cached image (it will not be evicted until released);
        ``NotFound`` if it is not cached."""
        slot = self._slots.get(digest)
        if slot is None:
            raise NotFound(f"image {digest} is not in the node's cache")
        slot.refs += 1
        self._touch(slot)
        return slot.image

    def release(self, digest: str) -> None:
        """Drop one reference (a no-op for an image that is not cached or not referenced)."""
        slot = self._slots.get(digest)
        if slot is None or slot.refs == 0:
            return
        slot.refs -= 1
        self._touch(slot)

    # ---- ensure --------------------------------------------------------------------------

    async def ensure(self, digest: str, fetch: Fetch, *, acquire: bool = True) -> UnpackedImage:
        """Return the unpacked image ``digest``, downloading and unpacking it if needed.

        ``fetch(path)`` must write the image's OCI archive to ``path``. The archive is fully
        verified (every sha256; its manifest digest must be ``digest``, else ``InvalidInput``
        "digest mismatch"); nothing of a failed attempt is kept. Concurrent calls for one
        digest share one download and unpack (the first caller's ``fetch`` is used).
        With ``acquire`` (the default) a reference is taken for the caller, atomically with
        the lookup: call ``release(digest)`` when done with it.
        """
        parse_digest(digest)
        slot = self._slots.get(digest)
        if slot is None:
            task = self._pending.get(digest)
            if task is None:
                task = asyncio.create_task(
                    self._materialize(digest, fetch), name=f"image-unpack-{digest[7:19]}"
                )
                self._pending[digest] = task
                task.add_done_callback(self._forget(digest))
            await asyncio.shield(task)
            slot = self._slots.get(digest)
            if slot is None:  # evicted in between by a concurrent caller's eviction
                return await self.ensure(digest, fetch, acquire=acquire)
            if acquire:
                slot.refs += 1
            self._touch(slot)
            await self.evict(keep=digest)
            return slot.image
        if acquire:
            slot.refs += 1
        self._touch(slot)
        return slot.image

    def _forget(self, digest: str) -> Callable[[asyncio.Task[UnpackedImage]], None]:
        def done(task: asyncio.Task[UnpackedImage]) -> None:
            if self._pending.get(digest) is task:
                del self._pending[digest]
            if not task.cancelled():
                task.exception()  # retrieved: waiters got it already

        return done

    async def _materialize(self, digest: str, fetch: Fetch) -> UnpackedImage:
        hexdigest = parse_digest(digest)
        work = self._tmp / f"{hexdigest}-{secrets.token_hex(4)}"
        work.mkdir(mode=0o700)
        started = time.monotonic()
        try:
            archive = work / "archive.tar"
            await fetch(archive)
            fetched = time.monotonic()
            if not archive.is_file():
                raise InvalidInput(f"the download of image {digest} produced no archive")
            layout = work / "layout"
            layout.mkdir()
            info = await asyncio.to_thread(
                inspect_archive, archive, expected_digest=digest, extract_to=layout
            )
            await asyncio.to_thread(archive.unlink)
            verified = time.monotonic()
            await self.evict(reserve=info.unpacked_size)  # make room before unpacking
            rootfs = work / "rootfs"
            await umoci.raw_unpack(
                layout, _TAG, rootfs, rootless=os.geteuid() != 0, binary=self._umoci
            )
            unpacked = time.monotonic()
            await asyncio.to_thread(_remove_tree, layout)
            size = await asyncio.to_thread(tree_size, rootfs)
            user, user_error = await asyncio.to_thread(_user_of, info.config, rootfs)
            final = self._images / hexdigest
            image = UnpackedImage(
                digest=digest,
                rootfs=final / "rootfs",
                config=info.config,
                size=size,
                user=user,
                user_error=user_error,
            )
            meta = work / _META
            await asyncio.to_thread(meta.write_text, json.dumps(_meta_json(image)))
            work.chmod(0o711)
            # the tree must be on disk before it is published: after a power loss a
            # published image must not have empty files
            await asyncio.to_thread(os.sync)
            await asyncio.to_thread(work.rename, final)
        except OSError as exc:
            await asyncio.shield(asyncio.to_thread(_remove_tree, work))
            log.warning("image_cache.unpack_failed", digest=digest, error=str(exc))
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise RuntimeFailure(
                    f"no space left on the node's disk for image {digest} ({self.root})"
                ) from exc
            raise RuntimeFailure(f"cannot unpack image {digest}: {exc}") from exc
        except RuntimeFailure as exc:
            await asyncio.shield(asyncio.to_thread(_remove_tree, work))
            log.warning("image_cache.unpack_failed", digest=digest, error=exc.detail)
            if "no space left on device" in exc.detail:
                raise RuntimeFailure(
                    f"no space left on the node's disk for image {digest} ({self.root})"
                ) from exc
            raise
        except BaseException as exc:
            await asyncio.shield(asyncio.to_thread(_remove_tree, work))
            log.warning("image_cache.unpack_failed", digest=digest, error=str(exc))
            raise
        self._slots[digest] = _Slot(image=image, last_used_ns=time.time_ns(), meta=final / _META)
        log.info(
            "image_cache.unpacked",
            digest=digest,
            size=size,
            seconds=round(time.monotonic() - started, 3),
            fetch_seconds=round(fetched - started, 3),
            verify_seconds=round(verified - fetched, 3),
            unpack_seconds=round(unpacked - verified, 3),
        )
        return image

    # ---- eviction ------------------------------------------------------------------------

    async def evict(self, *, keep: str | None = None, reserve: int = 0) -> list[str]:
        """Evict unused images, least recently used first, until the cache plus ``reserve``
        bytes fits ``max_bytes`` (or nothing unused is left); return the evicted digests.
        ``keep`` is spared this round."""
        used = self.used_bytes
        victims: list[tuple[str, Path]] = []
        for digest, slot in sorted(self._slots.items(), key=lambda kv: kv[1].last_used_ns):
            if used + reserve <= self.max_bytes:
                break
            if slot.refs > 0 or digest == keep:
                continue
            used -= slot.image.size
            victims.append((digest, self._detach(digest)))
        for _digest, path in victims:
            await asyncio.to_thread(_remove_tree, path)
        for digest, _path in victims:
            log.info("image_cache.evicted", digest=digest)
        return [digest for digest, _path in victims]

    def _detach(self, digest: str) -> Path:
        """Take an image out of the index and move its directory into tmp/ (atomic)."""
        del self._slots[digest]
        source = self._images / parse_digest(digest)
        target = self._tmp / f"evicted-{source.name}-{secrets.token_hex(4)}"
        source.rename(target)
        return target

    async def remove(self, digest: str) -> bool:
        """Remove one unused image now; ``Conflict`` while it has references."""
        slot = self._slots.get(digest)
        if slot is None:
            return False
        if slot.refs > 0:
            raise Conflict(f"image {digest} is in use by {slot.refs} instance(s)")
        await asyncio.to_thread(_remove_tree, self._detach(digest))
        return True

    async def close(self) -> None:
        """Cancel downloads and unpacks in progress (their work directories are removed)."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
