"""The per-project layer caches (``BUILDER_WORK_DIR/cache/<project id>``): who uses one, how
big they are, and what goes when they grow.

Each project's builds run in a buildah storage of its own, so an unchanged step of its next
build is ``Using cache``. Left alone it grows with every build (each build's image and the
layers of every step it changed). Between jobs the builder:

1. **trims** the project it has just built: every build's image but the newest (the one
   just built, with the cached layers of its steps) is removed, then the dangling layers;
   base images in the storage stay;
2. **prunes** (``plan``, pure): a project's cache unused for ``BUILDER_CACHE_MAX_AGE``
   seconds is removed; while all caches together are over ``BUILDER_CACHE_MAX_SIZE``, the
   least recently used ones are trimmed, then removed. The next build of a removed
   project starts cold (its base image is copied in again from the builder's base storage).

A build holds its project's lock file (``cache/<project id>.lock``, ``flock`` shared) from
its first buildah call to its last; trimming and pruning take it exclusively and without
waiting, so a cache in use by a build (of this builder or of another one sharing the work
directory) is never touched: it is skipped until the next pass. The lock file's mtime is
the cache's last use.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from zeitwork.builder.process import capture

log = structlog.get_logger("zeitwork.builder")

BUILDAH_TIMEOUT = 300.0
BUILD_TAG = ":build-"
"""in the name of each build's image (``localhost/<app>:build-<build id>``, ``runner``)"""
_PRUNE_PASSES = 5


@dataclass(frozen=True, slots=True)
class Policy:
    max_bytes: int
    """all caches together; 0: no cap"""
    max_age: float
    """seconds since a cache's last use; 0: never removed for its age"""


@dataclass(frozen=True, slots=True)
class Entry:
    project: str
    size: int
    last_used: float


@dataclass(frozen=True, slots=True)
class Plan:
    trim: tuple[str, ...]
    """over the cap: trim these first (least recently used first), then measure again"""
    remove: tuple[tuple[str, str], ...]
    """(project, reason): remove these caches"""


def plan(entries: Sequence[Entry], *, now: float, policy: Policy, busy: frozenset[str]) -> Plan:
    """What to do with the caches ``entries`` (pure). A ``busy`` cache is never named."""
    remove: list[tuple[str, str]] = []
    kept: list[Entry] = []
    for entry in entries:
        if entry.project in busy:
            continue
        if policy.max_age and now - entry.last_used > policy.max_age:
            remove.append((entry.project, "age"))
        else:
            kept.append(entry)
    total = sum(e.size for e in entries if e.project in busy) + sum(e.size for e in kept)
    trim: list[str] = []
    if policy.max_bytes and total > policy.max_bytes:
        for entry in sorted(kept, key=lambda e: e.last_used):
            if total <= policy.max_bytes:
                break
            trim.append(entry.project)
            remove.append((entry.project, "size"))
            total -= entry.size
    return Plan(trim=tuple(trim), remove=tuple(remove))


def disk_usage(path: Path) -> int:
    """Bytes of disk ``path`` holds (its files' blocks, each inode once; blocks)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _dirs, files in os.walk(path):
        for name in (".", *files):
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(directory, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[bool]:
    """Holds ``flock(mode)`` on ``path`` for the block; yields False when it is taken
    (``LOCK_NB``) and nothing is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


class LayerCaches:
    """The project caches under ``root`` and the buildah that manages their storage."""

    def __init__(self, *, root: Path, buildah: str, storage_driver: str, policy: Policy) -> None:
        self.root = root
        self._buildah = buildah
        self._driver = storage_driver
        self.policy = policy
        self.total_bytes = 0
        """all caches together after the last ``prune``"""

    def directory(self, project: str) -> Path:
        return self.root / project

    def storage(self, project: str) -> list[str]:
        """The buildah argv prefix for ``project``'s storage."""
        cache = self.directory(project)
        return [
            self._buildah,
            "--root",
            str(cache / "root"),
            "--runroot",
            str(cache / "runroot"),
            "--storage-driver",
            self._driver,
        ]

    def _lock_path(self, project: str) -> Path:
        return self.root / f"{project}.lock"

    @contextlib.asynccontextmanager
    async def in_use(self, project: str) -> AsyncIterator[None]:
        """Held by a build for its buildah calls: trimming and pruning skip the cache."""
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        lock = self._lock_path(project)
        fd = await asyncio.to_thread(os.open, lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_SH)  # waits out a prune
            os.utime(fd)
            yield
        finally:
            with contextlib.suppress(OSError):
                os.utime(fd)  # the last use is the build's end
            os.close(fd)

    def entries(self) -> list[Entry]:
        """Every project cache with its size and last use (blocks: call from a thread)."""
        found: list[Entry] = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.iterdir()):
            if not path.is_dir():
                continue
            lock = self._lock_path(path.name)
            try:
                used = (lock if lock.exists() else path).stat().st_mtime
            except OSError:
                continue
            found.append(Entry(project=path.name, size=disk_usage(path), last_used=used))
        return found

    def _busy(self, projects: Sequence[str]) -> frozenset[str]:
        busy = set()
        for project in projects:
            with _flock(self._lock_path(project), fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
                if not free:
                    busy.add(project)
        return frozenset(busy)

    async def trim(self, project: str) -> bool:
        """Every image of ``project``'s storage but the newest goes, then the dangling
        ones; False when a build holds the cache (nothing done)."""
        lock = self._lock_path(project)
        if not self.directory(project).is_dir():
            return True
        fd = await asyncio.to_thread(os.open, lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            await self._trim_locked(project)
            return True
        finally:
            os.close(fd)

    async def _buildah_run(self, project: str, *args: str) -> tuple[int, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        env["HOME"] = env["TMPDIR"] = str(self.directory(project))
        return await capture([*self.storage(project), *args], env=env, limit=BUILDAH_TIMEOUT)

    async def _trim_locked(self, project: str) -> None:
        status, out = await self._buildah_run(project, "images", "--json", "--no-trunc")
        if status != 0:
            log.warning("builder.cache_trim_failed", project=project, output=out[-500:])
            return
        images = _built_images(out)
        for image in images[1:]:  # newest first: the newest stays
            await self._buildah_run(project, "rmi", "--force", image)
        for _ in range(_PRUNE_PASSES):  # removing a leaf can leave its parent dangling
            status, out = await self._buildah_run(project, "rmi", "--prune")
            if status != 0 or not out.strip():
                break

    async def prune(self, *, now: float | None = None) -> list[tuple[str, str, int]]:
        """Apply ``plan`` to the caches: (project, reason, bytes freed) for each removed or
        trimmed cache."""
        entries = await asyncio.to_thread(self.entries)
        busy = await asyncio.to_thread(self._busy, [e.project for e in entries])
        decided = plan(
            entries, now=time.time() if now is None else now, policy=self.policy, busy=busy
        )
        sizes = {e.project: e.size for e in entries}
        total = sum(sizes.values())
        done: list[tuple[str, str, int]] = []
        for project, reason in decided.remove:
            if reason == "size" and project in decided.trim:
                if total <= self.policy.max_bytes:
                    break  # trimming the ones before was enough
                if await self.trim(project):
                    after = await asyncio.to_thread(disk_usage, self.directory(project))
                    freed = sizes[project] - after
                    total -= freed
                    sizes[project] = after
                    if freed > 0:
                        done.append((project, "trimmed", freed))
                    log.info("builder.cache_trimmed", project=project, freed_bytes=freed)
                    if total <= self.policy.max_bytes:
                        break
            if await asyncio.to_thread(self._remove, project):
                total -= sizes[project]
                done.append((project, reason, sizes[project]))
                log.info(
                    "builder.cache_removed",
                    project=project,
                    reason=reason,
                    freed_bytes=sizes[project],
                )
        self.total_bytes = max(total, 0)
        return done

    def _remove(self, project: str) -> bool:
        """Remove ``project``'s cache unless a build took it meanwhile."""
        with _flock(self._lock_path(project), fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
            if not free:
                return False
            # the lock file stays: a build waiting on it must lock the file the next
            # prune locks, not an unlinked one
            directory = self.directory(project)
            shutil.rmtree(directory, ignore_errors=True)
            return not directory.exists()


def _built_images(listing: str) -> list[str]:
    """Ids of the builds' images (named ``...:build-<id>``) in ``buildah images --json``
    output, newest first (pure). Base images (copied in, pulled) are not among them."""
    try:
        images = json.loads(listing or "[]")
    except json.JSONDecodeError:
        return []
    if not isinstance(images, list):
        return []
    named = [
        i
        for i in images
        if isinstance(i, Mapping)
        and isinstance(i.get("names"), list)
        and any(BUILD_TAG in str(name) for name in i["names"])
    ]
    named.sort(key=lambda i: (_number(i.get("created")), str(i.get("createdatraw", ""))))
    named.reverse()
    return [str(i["id"]) for i in named if i.get("id")]


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
