"""The node's cache of images ready to run, by digest, shared by instances.

Layout under ``root``::

    layers/<hex>/             one unpacked layer per diff id (``layers.LayerStore``), shared
                              by every image that holds it: an instance's root is an overlay
                              of its image's layer directories plus its own upper directory
    images/<hex>/image.json   digest, config, resolved user, size, the layers' diff ids
                              (bottom first); its mtime = last use
    images/<hex>/rootfs/      an image cached before the layer store (unpacked whole with
                              ``umoci raw unpack``), or when not root: such images keep
                              working as one read-only tree; for a layered image an empty
                              directory
    tmp/                      downloads, unpacks and views in progress (emptied on open)

An image directory appears in ``images/`` only complete (built in ``tmp/``, then renamed),
so a crash never leaves half an image that looks whole. One ``ImageCache`` per root: it
keeps reference counts in memory, so after an agent restart the agent must ``acquire`` the
images of the instances it re-adopts before anything can be evicted (``open`` evicts
nothing). A layer is referenced by every cached image holding it and removed only when no
cached image does.
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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from zeitwork.core.errors import Conflict, InvalidInput, NotFound, RuntimeFailure
from zeitwork.images import overlay, umoci
from zeitwork.images.config import ImageConfig, parse_image_config
from zeitwork.images.digests import is_hex, parse_digest
from zeitwork.images.layers import BlobSource, LayerStore
from zeitwork.images.layout import PLATFORM, _diff_ids, inspect_archive
from zeitwork.images.process import ProcessConfig, build_process
from zeitwork.images.tree import read_confined, tree_size
from zeitwork.images.users import ResolvedUser, resolve_user

log = structlog.get_logger(__name__)

Fetch = Callable[[Path], Awaitable[None]]
"""Writes the image's OCI archive to the given path (the agent's HTTP download)."""

_META = "image.json"
_TAG = "zeitwork"
_PARALLEL_LAYERS = 4


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """One layer of an image being pulled: its blob's digest and size and how to get it
    (``fetch()`` returns the path of the blob, verified against ``digest``)."""

    digest: str
    size: int
    fetch: BlobSource


@dataclass(frozen=True, slots=True)
class PulledImage:
    """What a pull hands the cache: the config blob's bytes (verified against the
    manifest's config digest) and the layers, bottom first."""

    config: bytes
    layers: tuple[LayerBlob, ...]


Pull = Callable[[], Awaitable[PulledImage]]


@dataclass(frozen=True, slots=True)
class UnpackedImage:
    """An image ready to run: its layers (or its tree), its config and its resolved user.

    ``layers`` are the read-only layer directories, top first (an overlay's ``lowerdir``
    order); empty for an image unpacked whole, whose tree is ``rootfs``. For a layered
    image ``rootfs`` is an empty directory: read its tree through ``ImageCache.view``.
    ``user_error`` is set (and ``user`` is None) when the image's ``User`` cannot be
    resolved against its own /etc/passwd and /etc/group; ``process()`` then raises it.
    """

    digest: str
    rootfs: Path
    config: ImageConfig
    size: int
    user: ResolvedUser | None
    user_error: str | None = None
    layers: tuple[Path, ...] = ()
    diff_ids: tuple[str, ...] = ()

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
    data: dict[str, Any] = {
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
    if image.diff_ids:
        data["diff_ids"] = list(image.diff_ids)  # bottom first, as in the image config
    return data


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
    diff_ids = data.get("diff_ids") or []
    if not isinstance(diff_ids, list):
        raise ValueError("diff_ids must be a list")
    return UnpackedImage(
        digest=str(data["digest"]),
        rootfs=rootfs,
        config=ImageConfig.from_dict(data["config"]),
        size=int(data["size"]),
        user=user,
        user_error=data.get("user_error"),
        diff_ids=tuple(str(d) for d in diff_ids),
    )


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _parse_config(data: bytes, layer_count: int) -> tuple[ImageConfig, list[str]]:
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"the image config is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput("the image config must be a JSON object")
    config = parse_image_config(raw)
    if (config.os, config.architecture) != PLATFORM:
        raise InvalidInput(
            f"image is for {config.os}/{config.architecture}; "
            f"this platform runs {'/'.join(PLATFORM)}"
        )
    return config, _diff_ids(raw, layer_count)


def _no_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(exc, RuntimeFailure) and "no space left on device" in exc.detail


class ImageCache:
    """Images by digest, with reference counts and LRU eviction beyond ``max_bytes``.

    Create it with ``await ImageCache.open(root=..., max_bytes=...)``. Use ``ensure`` (an
    archive) or ``ensure_pulled`` (layers from a registry) to get an image, made ready
    once however many callers ask at the same time, and ``release`` when an instance that
    used it is gone. Images with references are never evicted, nor their layers; unused
    ones are evicted least recently used first (layers no cached image holds go first)
    whenever the cache holds more than ``max_bytes``.

    ``layered`` (default: when running as root) unpacks each layer once into the layer
    store; otherwise every image is unpacked whole with ``umoci`` (rootless).
    """

    def __init__(
        self,
        *,
        root: Path,
        max_bytes: int,
        slots: dict[str, _Slot],
        layers: LayerStore | None,
        umoci_binary: str = "umoci",
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._images = root / "images"
        self._tmp = root / "tmp"
        self._slots = slots
        self._layers = layers
        self._pending: dict[str, asyncio.Task[UnpackedImage]] = {}
        self._umoci = umoci_binary
        self._last_ns = 0
        self._empty = root / "layers" / "tmp" / "empty"

    @classmethod
    async def open(
        cls,
        *,
        root: Path,
        max_bytes: int,
        umoci_binary: str = "umoci",
        layered: bool | None = None,
    ) -> ImageCache:
        """Open (or create) the cache at ``root``; finds the images made earlier and
        removes leftovers of interrupted work. Evicts nothing."""
        if max_bytes <= 0:
            raise InvalidInput("the image cache size must be positive")
        if layered is None:
            layered = os.geteuid() == 0
        slots, layers = await asyncio.to_thread(cls._scan, root, layered)
        log.info(
            "image_cache.opened",
            root=str(root),
            images=len(slots),
            layers=len(layers.entries()) if layers is not None else None,
            max_bytes=max_bytes,
        )
        return cls(
            root=root, max_bytes=max_bytes, slots=slots, layers=layers, umoci_binary=umoci_binary
        )

    @staticmethod
    def _scan(root: Path, layered: bool) -> tuple[dict[str, _Slot], LayerStore | None]:
        images, tmp = root / "images", root / "tmp"
        for directory in (root, images, tmp):
            directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        for leftover in tmp.iterdir():
            if leftover.is_dir() and not leftover.is_symlink():
                overlay.unmount(leftover)  # a view left mounted by a crash
                _remove_tree(leftover)
            else:
                leftover.unlink()
        store = LayerStore.open(root / "layers") if layered else None
        if store is not None:
            (root / "layers" / "tmp" / "empty").mkdir(mode=0o755)
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
                if image.diff_ids:
                    if store is None:
                        raise ValueError("a layered image, and this cache has no layer store")
                    missing = [d for d in image.diff_ids if not store.has(d)]
                    if missing:
                        raise ValueError(f"its layer {missing[0]} is not in the layer store")
                    layer_paths = [store.acquire(d) for d in reversed(image.diff_ids)]
                    image = _with_layers(image, _unique(layer_paths))
                last_used = meta.stat().st_mtime_ns
            except (OSError, ValueError, KeyError, TypeError, InvalidInput) as exc:
                log.warning("image_cache.discarded", path=str(directory), reason=str(exc))
                if directory.is_dir() and not directory.is_symlink():
                    _remove_tree(directory)
                else:
                    directory.unlink()
                continue
            slots[image.digest] = _Slot(image=image, last_used_ns=last_used, meta=meta)
        return slots, store

    # ---- queries -------------------------------------------------------------------------

    @property
    def layered(self) -> bool:
        return self._layers is not None

    @property
    def layer_store(self) -> LayerStore | None:
        return self._layers

    @property
    def used_bytes(self) -> int:
        whole = sum(slot.image.size for slot in self._slots.values() if not slot.image.diff_ids)
        return whole + (self._layers.used_bytes if self._layers is not None else 0)

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

    @contextlib.contextmanager
    def view(self, image: UnpackedImage) -> Iterator[Path]:
        """Blocking: the image's tree as one read-only directory while the block runs (a
        layered image's overlay, mounted then; an image unpacked whole, its ``rootfs``)."""
        if not image.layers:
            yield image.rootfs
            return
        target = self._tmp / f"view-{image.digest[7:19]}-{secrets.token_hex(4)}"
        target.mkdir(mode=0o700)
        try:
            overlay.mount_view(image.layers, target, empty=self._empty)
            try:
                yield target
            finally:
                overlay.unmount(target)
        finally:
            target.rmdir()

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
        """Return the image ``digest``, downloading and unpacking it if needed.

        ``fetch(path)`` must write the image's OCI archive to ``path``. The archive is fully
        verified (every sha256; its manifest digest must be ``digest``, else ``InvalidInput``
        "digest mismatch"); nothing of a failed attempt is kept. Concurrent calls for one
        digest share one download and unpack (the first caller's ``fetch`` is used).
        With ``acquire`` (the default) a reference is taken for the caller, atomically with
        the lookup: call ``release(digest)`` when done with it.
        """
        return await self._ensure(digest, lambda: self._materialize(digest, fetch), acquire)

    async def ensure_pulled(
        self, digest: str, pull: Pull, *, acquire: bool = True
    ) -> UnpackedImage:
        """Like ``ensure``, for an image pulled layer by layer (needs the layer store).

        ``pull()`` returns the verified config and the layers; each layer not in the layer
        store is fetched and unpacked (several at once; a layer shared with another image
        being pulled is unpacked once), its uncompressed bytes checked against the config's
        diff id. The caller has checked the manifest against ``digest``.
        """
        if self._layers is None:
            raise RuntimeFailure("this image cache has no layer store (it needs root)")
        return await self._ensure(digest, lambda: self._materialize_pulled(digest, pull), acquire)

    async def _ensure(
        self, digest: str, make: Callable[[], Awaitable[UnpackedImage]], acquire: bool
    ) -> UnpackedImage:
        parse_digest(digest)
        slot = self._slots.get(digest)
        if slot is None:
            task = self._pending.get(digest)
            if task is None:
                task = asyncio.create_task(
                    self._guarded(digest, make), name=f"image-unpack-{digest[7:19]}"
                )
                self._pending[digest] = task
                task.add_done_callback(self._forget(digest))
            await asyncio.shield(task)
            slot = self._slots.get(digest)
            if slot is None:  # evicted in between by a concurrent caller's eviction
                return await self._ensure(digest, make, acquire)
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

    async def _guarded(
        self, digest: str, make: Callable[[], Awaitable[UnpackedImage]]
    ) -> UnpackedImage:
        try:
            return await make()
        except OSError as exc:
            log.warning("image_cache.unpack_failed", digest=digest, error=str(exc))
            if _no_space(exc):
                raise RuntimeFailure(
                    f"no space left on the node's disk for image {digest} ({self.root})"
                ) from exc
            raise RuntimeFailure(f"cannot unpack image {digest}: {exc}") from exc
        except RuntimeFailure as exc:
            log.warning("image_cache.unpack_failed", digest=digest, error=exc.detail)
            if _no_space(exc):
                raise RuntimeFailure(
                    f"no space left on the node's disk for image {digest} ({self.root})"
                ) from exc
            raise
        except BaseException as exc:
            log.warning("image_cache.unpack_failed", digest=digest, error=str(exc))
            raise

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
            if self._layers is not None:
                blobs = layout / "blobs" / "sha256"
                layers = tuple(
                    LayerBlob(d, (blobs / parse_digest(d)).stat().st_size, _ready(blobs / d[7:]))
                    for d in info.layers
                )
                return await self._build_layered(
                    digest,
                    work,
                    info.config,
                    list(info.diff_ids),
                    layers,
                    reserve=-1,  # for the missing layers only
                    timings={"fetch": fetched - started, "verify": verified - fetched},
                )
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
            # the image directory appears whole by one rename(2) (a tree, not a file:
            # core/files.py does not apply)
            await asyncio.to_thread(work.rename, final)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_remove_tree, work))
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

    async def _materialize_pulled(self, digest: str, pull: Pull) -> UnpackedImage:
        hexdigest = parse_digest(digest)
        work = self._tmp / f"{hexdigest}-{secrets.token_hex(4)}"
        work.mkdir(mode=0o700)
        started = time.monotonic()
        try:
            pulled = await pull()
            config, diff_ids = _parse_config(pulled.config, len(pulled.layers))
            return await self._build_layered(
                digest,
                work,
                config,
                diff_ids,
                pulled.layers,
                reserve=-1,  # estimated from the missing layers' blobs
                timings={"manifest": time.monotonic() - started},
            )
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_remove_tree, work))
            raise

    async def _build_layered(
        self,
        digest: str,
        work: Path,
        config: ImageConfig,
        diff_ids: Sequence[str],
        layers: Sequence[LayerBlob],
        *,
        reserve: int,
        timings: dict[str, float],
    ) -> UnpackedImage:
        """Unpack the missing layers (at most a few at once), resolve the user through a
        view, and publish ``images/<hex>``; the caller removes ``work`` if this raises."""
        store = self._layers
        assert store is not None
        started = time.monotonic()
        held: list[str] = []  # a reference per layer of the image, once it is here
        todo: list[tuple[int, str, LayerBlob]] = []
        for index, (diff_id, blob) in enumerate(zip(diff_ids, layers, strict=True)):
            if store.has(diff_id):
                store.acquire(diff_id)  # before the eviction below, which spares it then
                held.append(diff_id)
            else:
                todo.append((index, diff_id, blob))
        limit = asyncio.Semaphore(_PARALLEL_LAYERS)

        async def one(index: int, diff_id: str, blob: LayerBlob) -> None:
            async with limit:
                await store.ensure(diff_id, blob.fetch, digest=blob.digest, what=f"layer {index}")
            held.append(diff_id)

        if reserve < 0:  # unpacked, a gzip layer is about twice its blob
            reserve = sum(2 * blob.size for _index, _diff_id, blob in todo)
        try:
            await self.evict(reserve=reserve if todo else 0)
            try:
                async with asyncio.TaskGroup() as group:
                    for index, diff_id, blob in todo:
                        group.create_task(one(index, diff_id, blob))
            except BaseExceptionGroup as failed:
                first: BaseException = failed
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                raise first from None
            unpacked = time.monotonic()
            paths = _unique(store.path(d) for d in reversed(diff_ids))  # top first
            if todo:
                store.flush_later()  # their markers, once on disk (not waited for)
            hexdigest = parse_digest(digest)
            final = self._images / hexdigest
            size = sum(store.size(d) for d in set(diff_ids))
            probe = UnpackedImage(
                digest=digest,
                rootfs=final / "rootfs",
                config=config,
                size=size,
                user=None,
                layers=paths,
                diff_ids=tuple(diff_ids),
            )
            user, user_error = await asyncio.to_thread(self._layered_user, probe)
            image = _with_user(probe, user, user_error)
            await asyncio.to_thread(_write_image_dir, work, image)
            await asyncio.to_thread(work.rename, final)  # a directory, as above
        except BaseException:
            for diff_id in held:
                store.release(diff_id)
            raise
        self._slots[digest] = _Slot(image=image, last_used_ns=time.time_ns(), meta=final / _META)
        log.info(
            "image_cache.layered",
            digest=digest,
            size=size,
            layers=len(diff_ids),
            unpacked_layers=len(todo),
            seconds=round(time.monotonic() - started + sum(timings.values()), 3),
            **{f"{name}_seconds": round(value, 3) for name, value in timings.items()},
            layers_seconds=round(unpacked - started, 3),
        )
        return image

    def _layered_user(self, image: UnpackedImage) -> tuple[ResolvedUser | None, str | None]:
        with self.view(image) as tree:
            return _user_of(image.config, tree)

    # ---- eviction ------------------------------------------------------------------------

    async def evict(self, *, keep: str | None = None, reserve: int = 0) -> list[str]:
        """Evict unused images, least recently used first, until the cache plus ``reserve``
        bytes fits ``max_bytes`` (or nothing unused is left); return the evicted digests.
        Layers that no cached image holds are removed first. ``keep`` is spared this
        round; layers of images with references, or being made, are never removed."""
        victims: list[tuple[str, Path]] = []
        layer_dirs: list[Path] = []

        def excess() -> int:
            return self.used_bytes + reserve - self.max_bytes

        if self._layers is not None and excess() > 0:
            layer_dirs += self._layers.detach_unused(excess())
        for digest, slot in sorted(self._slots.items(), key=lambda kv: kv[1].last_used_ns):
            if excess() <= 0:
                break
            if slot.refs > 0 or digest == keep:
                continue
            victims.append((digest, self._detach(digest)))
            if self._layers is not None:
                layer_dirs += self._layers.detach_unused(excess())
        for _digest, path in victims:
            await asyncio.to_thread(_remove_tree, path)
        if layer_dirs:
            await asyncio.to_thread(LayerStore.remove_detached, layer_dirs)
        for digest, _path in victims:
            log.info("image_cache.evicted", digest=digest)
        return [digest for digest, _path in victims]

    def _detach(self, digest: str) -> Path:
        """Take an image out of the index and move its directory into tmp/ (atomic); its
        layers lose a reference."""
        slot = self._slots.pop(digest)
        if self._layers is not None:
            for diff_id in slot.image.diff_ids:
                self._layers.release(diff_id)
        source = self._images / parse_digest(digest)
        target = self._tmp / f"evicted-{source.name}-{secrets.token_hex(4)}"
        source.rename(target)  # a directory moved aside in one rename(2), removed later
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
        if self._layers is not None:
            await self._layers.close()


def _unique(paths: Iterable[Path]) -> tuple[Path, ...]:
    """Layer directories for an overlay, each once (the topmost occurrence of a layer an
    image holds twice: overlayfs refuses a directory twice)."""
    seen: set[Path] = set()
    result = []
    for path in paths:
        if path not in seen:
            seen.add(path)
            result.append(path)
    return tuple(result)


def _ready(path: Path) -> BlobSource:
    async def source() -> Path:
        return path

    return source


def _with_layers(image: UnpackedImage, layers: tuple[Path, ...]) -> UnpackedImage:
    return UnpackedImage(
        digest=image.digest,
        rootfs=image.rootfs,
        config=image.config,
        size=image.size,
        user=image.user,
        user_error=image.user_error,
        layers=layers,
        diff_ids=image.diff_ids,
    )


def _with_user(
    image: UnpackedImage, user: ResolvedUser | None, user_error: str | None
) -> UnpackedImage:
    return UnpackedImage(
        digest=image.digest,
        rootfs=image.rootfs,
        config=image.config,
        size=image.size,
        user=user,
        user_error=user_error,
        layers=image.layers,
        diff_ids=image.diff_ids,
    )


def _write_image_dir(work: Path, image: UnpackedImage) -> None:
    _remove_tree(work / "layout")  # the verified blobs of an archive: unpacked now
    (work / "rootfs").mkdir(mode=0o755)
    (work / _META).write_text(json.dumps(_meta_json(image)))
    work.chmod(0o711)
