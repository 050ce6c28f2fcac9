"""The node's layer store: every image layer unpacked once, by diff id, into its own
directory, shared read-only by every image that holds it (as an overlayfs lower layer).

Layout under ``root``::

    <hex>/        the layer unpacked with overlayfs whiteouts (``unpack.unpack_layer``),
                  named by its diff id (sha256 of the uncompressed tar); never written after
    <hex>.json    {"diff_id", "size"}: written once the tree is on disk (a thread runs
                  syncfs, then writes it); a directory without it is discarded on open
                  (unless a mounted overlay, a running instance's root, reads it: then it
                  is flushed and kept); its mtime = last use
    tmp/          unpacks in progress and removed layers (emptied on open)

``ensure`` unpacks a missing layer once however many images want it at the same time
(single flight). Reference counts (``acquire``/``release``) are kept by the image cache,
one per cached image holding the layer; ``detach_unused`` removes unreferenced layers,
least recently used first: a layer in use is never removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from zeitwork.core.files import atomic_write
from zeitwork.images.digests import is_hex, parse_digest
from zeitwork.images.tree import tree_size
from zeitwork.images.unpack import unpack_layer

log = structlog.get_logger(__name__)

BlobSource = Callable[[], Awaitable[Path]]
"""Makes the layer's blob (gzip or plain tar) available as a file and returns its path."""

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def syncfs(path: Path) -> None:
    """Blocking: flush the file system holding ``path`` (``syncfs(2)``; not every disk)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Entry:
    diff_id: str
    size: int
    last_used_ns: int
    refs: int = 0
    durable: bool = True


@dataclass(frozen=True, slots=True)
class LayerEntry:
    """One stored layer as ``entries()`` reports it."""

    diff_id: str
    path: Path
    size: int
    refs: int


class LayerStore:
    """Unpacked layers by diff id. Create with ``LayerStore.open(root)`` (blocking)."""

    def __init__(self, *, root: Path, entries: dict[str, _Entry]) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._entries = entries
        self._pending: dict[str, asyncio.Task[Path]] = {}
        self._last_ns = 0
        self.unpacked: list[str] = []  # diff ids unpacked by this process, in order
        self._flush_lock = threading.Lock()
        self._flush_again = False
        self._flusher: threading.Thread | None = None

    @classmethod
    def open(cls, root: Path) -> LayerStore:
        """Blocking: open (or create) the store; removes interrupted work and layers whose
        completion marker is missing."""
        tmp = root / "tmp"
        for directory in (root, tmp):
            directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        for leftover in tmp.iterdir():
            _remove(leftover)
        entries: dict[str, _Entry] = {}
        in_use = overlay_lowers()
        for item in root.iterdir():
            if item.name == "tmp":
                continue
            hexdigest = item.name.removesuffix(".json")
            if not is_hex(hexdigest):
                log.warning("layer_store.discarded", path=str(item), reason="not a layer")
                _remove(item)
                continue
            if item.name.endswith(".json"):
                if not (root / hexdigest).is_dir():
                    item.unlink()
                continue
            meta = root / f"{hexdigest}.json"
            try:
                data = json.loads(meta.read_text())
                if data["diff_id"] != "sha256:" + hexdigest:
                    raise ValueError("the marker names another layer")
                entries[data["diff_id"]] = _Entry(
                    diff_id=data["diff_id"],
                    size=int(data["size"]),
                    last_used_ns=meta.stat().st_mtime_ns,
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                if str(item) in in_use and item.is_dir():
                    # published (whole), not yet flushed when the agent stopped, and a
                    # running instance's overlay reads it: flush it and keep it
                    syncfs(root)
                    entry = _Entry("sha256:" + hexdigest, tree_size(item), time.time_ns())
                    _write_marker_file(meta, entry, tmp)
                    entries[entry.diff_id] = entry
                    log.warning("layer_store.kept_in_use", path=str(item), reason=str(exc))
                    continue
                log.warning("layer_store.discarded", path=str(item), reason=str(exc))
                _remove(item)
                with contextlib.suppress(FileNotFoundError):
                    meta.unlink()
        return cls(root=root, entries=entries)

    # ---- queries -------------------------------------------------------------------------

    def path(self, diff_id: str) -> Path:
        return self.root / parse_digest(diff_id)

    def has(self, diff_id: str) -> bool:
        return diff_id in self._entries

    def size(self, diff_id: str) -> int:
        entry = self._entries.get(diff_id)
        return entry.size if entry is not None else 0

    def refs(self, diff_id: str) -> int:
        entry = self._entries.get(diff_id)
        return entry.refs if entry is not None else 0

    @property
    def used_bytes(self) -> int:
        return sum(entry.size for entry in self._entries.values())

    def entries(self) -> list[LayerEntry]:
        """Stored layers, least recently used first."""
        return [
            LayerEntry(e.diff_id, self.path(e.diff_id), e.size, e.refs)
            for e in sorted(self._entries.values(), key=lambda e: e.last_used_ns)
        ]

    # ---- references ----------------------------------------------------------------------

    def _touch(self, entry: _Entry) -> None:
        now = max(time.time_ns(), self._last_ns + 1)
        self._last_ns = now
        entry.last_used_ns = now
        if entry.durable:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.root / f"{parse_digest(entry.diff_id)}.json", ns=(now, now))

    def acquire(self, diff_id: str) -> Path:
        entry = self._entries.get(diff_id)
        if entry is None:
            raise KeyError(diff_id)
        entry.refs += 1
        self._touch(entry)
        return self.path(diff_id)

    def release(self, diff_id: str) -> None:
        entry = self._entries.get(diff_id)
        if entry is not None and entry.refs > 0:
            entry.refs -= 1
            self._touch(entry)

    # ---- ensure --------------------------------------------------------------------------

    async def ensure(
        self,
        diff_id: str,
        source: BlobSource,
        *,
        digest: str | None = None,
        what: str = "layer",
    ) -> Path:
        """The directory of layer ``diff_id`` with a reference taken (``release`` it),
        unpacked from ``source()`` unless stored; concurrent calls share one unpack. The
        blob must hash to ``digest`` and its uncompressed bytes to ``diff_id``
        (``InvalidInput`` otherwise)."""
        parse_digest(diff_id)
        while diff_id not in self._entries:
            task = self._pending.get(diff_id)
            if task is None:
                task = asyncio.create_task(
                    self._unpack(diff_id, source, digest, what), name=f"layer-{diff_id[7:19]}"
                )
                self._pending[diff_id] = task
                task.add_done_callback(lambda done: self._forget(diff_id, done))
            await asyncio.shield(task)
        return self.acquire(diff_id)

    def _forget(self, diff_id: str, task: asyncio.Task[Path]) -> None:
        if self._pending.get(diff_id) is task:
            del self._pending[diff_id]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters got it

    async def _unpack(
        self, diff_id: str, source: BlobSource, digest: str | None, what: str
    ) -> Path:
        hexdigest = parse_digest(diff_id)
        work = self._tmp / f"{hexdigest}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            blob = await source()
            fetched = time.monotonic()
            await asyncio.to_thread(work.mkdir, 0o700)
            result = await asyncio.to_thread(
                unpack_layer, blob, work, diff_id=diff_id, digest=digest, what=what
            )
            await asyncio.to_thread(_publish, work, self.root / hexdigest)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_remove, work))
            raise
        self._entries[diff_id] = _Entry(
            diff_id=diff_id, size=result.size, last_used_ns=time.time_ns(), durable=False
        )
        self.unpacked.append(diff_id)
        log.info(
            "layer_store.unpacked",
            diff_id=diff_id,
            size=result.size,
            entries=result.entries,
            skipped_devices=result.skipped_devices,
            fetch_seconds=round(fetched - started, 3),
            unpack_seconds=round(time.monotonic() - fetched, 3),
        )
        return self.root / hexdigest

    # ---- durability ----------------------------------------------------------------------

    def flush_later(self) -> None:
        """Write the completion markers of the new layers once they are on disk: a thread
        of its own runs ``syncfs(2)`` of the store, then writes them. A layer is usable at
        once; one without its marker is discarded by the next ``open`` (after a crash or a
        power loss it may be incomplete on disk), and so is every image naming it."""
        with self._flush_lock:
            self._flush_again = True
            if self._flusher is not None and self._flusher.is_alive():
                return
            self._flusher = threading.Thread(
                target=self._flush_loop, name="layer-store-flush", daemon=True
            )
            self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            with self._flush_lock:
                if not self._flush_again:
                    return
                self._flush_again = False
            pending = [e for e in list(self._entries.values()) if not e.durable]
            started = time.monotonic()
            try:
                syncfs(self.root)
                for entry in pending:
                    self._write_marker(entry)
            except OSError as exc:  # the store went away (a test's directory, a disk)
                log.warning("layer_store.flush_failed", error=str(exc))
                return
            log.debug(
                "layer_store.flushed",
                layers=len(pending),
                seconds=round(time.monotonic() - started, 3),
            )

    def _write_marker(self, entry: _Entry) -> None:
        if entry.durable or self._entries.get(entry.diff_id) is not entry:
            return  # removed meanwhile
        meta = self.root / f"{parse_digest(entry.diff_id)}.json"
        _write_marker_file(meta, entry, self._tmp)
        entry.durable = True

    def wait_flushed(self, timeout: float | None = None) -> None:
        """Blocking: wait for the markers of the layers unpacked so far."""
        flusher = self._flusher
        if flusher is not None:
            flusher.join(timeout)

    # ---- removal -------------------------------------------------------------------------

    def detach_unused(self, excess: int) -> list[Path]:
        """Take unreferenced layers out of the store, least recently used first, until
        ``excess`` bytes are freed; return their directories (moved into tmp/, for the
        caller to remove with ``remove_detached``). Layers being unpacked are not here yet."""
        detached: list[Path] = []
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used_ns):
            if excess <= 0:
                break
            if entry.refs > 0:
                continue
            detached.append(self._detach(entry.diff_id))
            excess -= entry.size
        return detached

    def _detach(self, diff_id: str) -> Path:
        del self._entries[diff_id]
        hexdigest = parse_digest(diff_id)
        with contextlib.suppress(FileNotFoundError):
            (self.root / f"{hexdigest}.json").unlink()
        target = self._tmp / f"removed-{hexdigest}-{secrets.token_hex(4)}"
        # a directory moved out of the store in one rename(2), not a file written: not
        # core/files.py's (the tree is removed later, out of the index's way)
        (self.root / hexdigest).rename(target)
        log.info("layer_store.removed", diff_id=diff_id)
        return target

    @staticmethod
    def remove_detached(paths: Iterable[Path]) -> None:
        for path in paths:
            _remove(path)

    async def close(self) -> None:
        """Cancel unpacks in progress; wait for the markers of the finished ones."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(self.wait_flushed)


def overlay_lowers() -> set[str]:
    """Blocking: every lower directory of the overlay mounts this process can see."""
    found: set[str] = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as info:
            for line in info:
                fields = line.split()
                tail = fields[fields.index("-") + 1 :]
                if len(tail) < 3 or tail[0] != "overlay":
                    continue
                for option in tail[2].split(","):
                    key, _, value = option.partition("=")
                    if key == "lowerdir":
                        found.update(value.split(":"))
                    elif key == "lowerdir+":
                        found.add(value)
    except (OSError, ValueError):
        pass
    return found


def _write_marker_file(meta: Path, entry: _Entry, tmp: Path) -> None:
    """The completion marker, after the tree's syncfs. Not fsynced itself: a marker lost
    or torn by a power cut discards the layer on open, to be unpacked again. The temp goes
    in the store's tmp/, which open empties."""
    data = json.dumps({"diff_id": entry.diff_id, "size": entry.size}).encode()
    atomic_write(meta, data, durable=False, temp_dir=tmp)


def _publish(work: Path, final: Path) -> None:
    if final.exists():  # left by a crash before its marker: this one replaces it
        _remove(final)
    # an unpacked tree moved into place whole by one rename(2) of its directory (core/files
    # writes files); its marker, written after a syncfs, is what makes it durable
    work.rename(final)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
