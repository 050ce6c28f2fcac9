"""Root filesystems for microVMs: one ext4 image per image digest, and a copy-on-write view
of it per instance.

The image is built once with ``mkfs.ext4 -d <tree>`` (no mount, no loop device) from the
unpacked, read-only image tree, and ``/zeitwork-init`` plus a static busybox are then written
into it with ``debugfs -w``, so the shared tree is never modified. Each instance boots from
its own view, made without copying data:

- ``reflink``: ``FICLONE`` of the image (XFS with reflink=1, btrfs, bcachefs...). The view is
  a plain file in the jail; writes allocate new blocks, the base stays untouched.
- ``dm-snapshot``: the base attached read-only to a loop device, a sparse per-instance COW
  file on a second loop device, and a device-mapper ``snapshot`` target over both; the jail
  gets a block-device node for it.

If neither works where the views live, starting fails with a clear reason (a full copy is
never made on the start path).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib.resources
import math
import os
import re
import secrets
import stat
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from zeitwork.core.errors import InvalidInput, RuntimeFailure
from zeitwork.core.files import PendingFile
from zeitwork.runtime.oci import mounts

log = structlog.get_logger(__name__)

CowMethod = Literal["reflink", "dm-snapshot"]
FICLONE = 0x40049409  # _IOW(0x94, 9, int)
MIB = 1024 * 1024
BLOCK = 4096
_DIGEST = re.compile(r"^(sha256|sha512):([a-f0-9]{64}|[a-f0-9]{128})$")
INIT_SCRIPT = "zeitwork-init.sh"


def image_name(digest: str) -> str:
    match = _DIGEST.match(digest)
    if not match:
        raise InvalidInput(f"{digest!r} is not an image digest (sha256:<64 hex>)")
    return f"{match.group(1)}-{match.group(2)}.ext4"


def image_size_mib(*, used_bytes: int, inodes: int, headroom_mib: int) -> int:
    """ext4 size for a tree: its data plus inode tables and metadata, plus free space the
    app may write into (the file is sparse, so headroom costs nothing until used)."""
    metadata = inodes * 256 + 16 * MIB  # inode tables + journal/bitmaps floor
    return math.ceil((used_bytes * 1.1 + metadata) / MIB) + headroom_mib


def inode_count(entries: int) -> int:
    return max(16384, entries * 2 + 1024)


def debugfs_script(*, busybox: Path, init: Path) -> str:
    """debugfs commands that add the init and busybox to a built image (root-owned)."""
    return "\n".join(
        [
            "mkdir /.zeitwork",
            "rm /.zeitwork/busybox",
            f"write {busybox} /.zeitwork/busybox",
            "set_inode_field /.zeitwork/busybox mode 0100755",
            "set_inode_field /.zeitwork/busybox uid 0",
            "set_inode_field /.zeitwork/busybox gid 0",
            "rm /zeitwork-init",
            f"write {init} /zeitwork-init",
            "set_inode_field /zeitwork-init mode 0100755",
            "set_inode_field /zeitwork-init uid 0",
            "set_inode_field /zeitwork-init gid 0",
            "",
        ]
    )


def dm_snapshot_table(*, sectors: int, origin: str, cow: str, chunk_sectors: int = 8) -> str:
    """A device-mapper table: a non-persistent snapshot of ``origin`` with writes in ``cow``."""
    return f"0 {sectors} snapshot {origin} {cow} N {chunk_sectors}"


def _tree_usage(tree: Path) -> tuple[int, int]:
    used = 0
    entries = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            used += -(-st.st_size // BLOCK) * BLOCK
        used += BLOCK * (len(dirnames) + 1)
    return used, entries


def _clone(src: Path, dest: Path) -> None:
    """FICLONE ``src`` into a new file ``dest`` (raises OSError where unsupported)."""
    with open(src, "rb") as fsrc:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.ioctl(fd, FICLONE, fsrc.fileno())
        except OSError:
            os.close(fd)
            dest.unlink(missing_ok=True)
            raise
        os.close(fd)


def probe_reflink(directory: Path) -> str | None:
    """None when FICLONE works in ``directory``, else the reason it does not."""
    directory.mkdir(parents=True, exist_ok=True)
    src = directory / f".reflink-probe-{secrets.token_hex(4)}"
    dest = src.with_suffix(".clone")
    try:
        src.write_bytes(b"z" * BLOCK)
        _clone(src, dest)
        return None
    except OSError as exc:
        return f"reflink (FICLONE) is not supported in {directory}: {exc.strerror}"
    finally:
        src.unlink(missing_ok=True)
        dest.unlink(missing_ok=True)


def probe_device_mapper(misc: Path = Path("/proc/misc")) -> str | None:
    """None when the kernel offers device-mapper (a ``/dev/mapper/control`` node alone is
    no proof: dmsetup creates it even when the driver is absent)."""
    try:
        names = misc.read_text().split()
    except OSError:
        names = []
    if "device-mapper" not in names:
        return "the kernel has no device-mapper (no device-mapper in /proc/misc)"
    return None


def detect_cow_method(directory: Path) -> tuple[CowMethod | None, str]:
    """Which copy-on-write method works for views in ``directory``, and why."""
    reflink_problem = probe_reflink(directory)
    if reflink_problem is None:
        return "reflink", f"FICLONE works in {directory}"
    dm_problem = probe_device_mapper()
    if dm_problem is None:
        return "dm-snapshot", f"{reflink_problem}; using device-mapper snapshots"
    return None, (
        f"no copy-on-write method for root filesystems: {reflink_problem}, and {dm_problem}. "
        "Put the jailer's chroot base on XFS (reflink=1) or btrfs, or load dm-snapshot"
    )


@dataclass(frozen=True, slots=True)
class CowView:
    """One instance's writable view of a base image (JSON-able through ``as_dict``)."""

    method: CowMethod
    path: Path  # what firecracker opens, inside the jail
    dm_name: str | None = None
    loops: tuple[str, ...] = ()  # loop devices owned by this view (the COW file's)

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": str(self.path),
            "dm_name": self.dm_name,
            "loops": list(self.loops),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CowView:
        return cls(
            method=data["method"],
            path=Path(data["path"]),
            dm_name=data.get("dm_name"),
            loops=tuple(data.get("loops", ())),
        )


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        message = (err or out).decode(errors="replace").strip().splitlines()
        raise RuntimeFailure(
            f"{Path(argv[0]).name} failed: {message[-1] if message else proc.returncode}",
            extra={"argv": list(argv)},
        )
    return out.decode(errors="replace")


class RootfsStore:
    """Builds base images once per digest and hands out per-instance views."""

    def __init__(
        self,
        *,
        directory: Path,
        busybox: Path,
        headroom_mib: int = 256,
        mkfs: str = "mkfs.ext4",
        debugfs: str = "debugfs",
        cow_method: CowMethod | Literal["auto"] = "auto",
    ) -> None:
        self._dir = directory
        self._busybox = busybox
        self._headroom = headroom_mib
        self._mkfs = mkfs
        self._debugfs = debugfs
        self._cow_choice = cow_method
        self._cow: CowMethod | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._base_loops: dict[Path, str] = {}

    @property
    def directory(self) -> Path:
        return self._dir

    def image_path(self, digest: str) -> Path:
        return self._dir / image_name(digest)

    async def ensure(self, digest: str, tree: Path, *, layers: Sequence[Path] = ()) -> Path:
        """The base image for ``digest``, built from ``tree`` the first time; with
        ``layers`` (the image's layer directories, top first) from their merged view, a
        read-only overlay mounted while ``mkfs.ext4`` reads it."""
        target = self.image_path(digest)
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if _is_file(target):
                return target
            if layers:
                async with self._merged(layers) as merged:
                    return await self._build(digest, merged, target)
            return await self._build(digest, tree, target)

    @contextlib.asynccontextmanager
    async def _merged(self, layers: Sequence[Path]) -> AsyncIterator[Path]:
        self._dir.mkdir(parents=True, exist_ok=True)
        view = Path(tempfile.mkdtemp(prefix=".view-", dir=self._dir))
        empty = view.with_name(view.name + "-empty")
        empty.mkdir()
        lowers = list(layers) if len(layers) > 1 else [*layers, empty]
        try:
            await asyncio.to_thread(
                mounts.mount_overlay, lower=lowers, upper=None, work=None, target=view
            )
            try:
                yield view
            finally:
                await asyncio.to_thread(mounts.unmount, view)
        finally:
            await asyncio.to_thread(_rmdirs, view, empty)

    async def _build(self, digest: str, tree: Path, target: Path) -> Path:
        """Build the ext4 image for ``digest`` from ``tree`` (under the digest's lock)."""
        if not _is_dir(tree):
            raise RuntimeFailure(f"the unpacked image tree {tree} does not exist")
        if not _is_file(self._busybox):
            raise RuntimeFailure(
                f"static busybox not found at {self._busybox} (install busybox-static)"
            )
        self._dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        used, entries = await asyncio.to_thread(_tree_usage, tree)
        size = image_size_mib(
            used_bytes=used, inodes=inode_count(entries), headroom_mib=self._headroom
        )
        # made by mkfs and debugfs in a temp file; read-only once in place (each instance
        # gets its own copy); the commit's fsyncs run in a thread
        async with PendingFile(target, mode=0o444) as pending:
            tmp = pending.temp
            _sparse_file(tmp, size * MIB)
            await _run(
                self._mkfs,
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "zeitwork-root",
                "-N",
                str(inode_count(entries)),
                "-E",
                "root_owner=0:0",
                "-d",
                str(tree),
                str(tmp),
            )
            await self._add_init(tmp)
        log.info(
            "rootfs.built",
            digest=digest,
            size_mib=size,
            seconds=round(loop.time() - started, 3),
        )
        return target

    async def _add_init(self, image: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="zeitwork-init-") as scratch:
            init = Path(scratch) / "zeitwork-init"
            source = importlib.resources.files(__package__).joinpath(INIT_SCRIPT)
            init.write_bytes(source.read_bytes())
            init.chmod(0o755)
            script = Path(scratch) / "commands"
            script.write_text(debugfs_script(busybox=self._busybox, init=init))
            await _run(self._debugfs, "-w", "-f", str(script), str(image))
            check = await _run(self._debugfs, "-R", "stat /zeitwork-init", str(image))
            if "Type: regular" not in check:
                raise RuntimeFailure(f"debugfs did not add /zeitwork-init to {image}")

    def cow_method(self) -> tuple[CowMethod | None, str]:
        if self._cow_choice != "auto":
            return self._cow_choice, "configured"
        method, reason = detect_cow_method(self._dir)
        return method, reason

    async def make_view(self, image: Path, dest: Path, *, uid: int, gid: int) -> CowView:
        """A writable copy-on-write view of ``image`` at ``dest`` owned by ``uid:gid``."""
        if self._cow is None:
            method, reason = self.cow_method()
            if method is None:
                raise RuntimeFailure(reason)
            log.info("rootfs.cow_method", method=method, reason=reason)
            self._cow = method
        if self._cow == "reflink":
            try:
                await asyncio.to_thread(_clone, image, dest)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    raise RuntimeFailure(
                        f"{image} and {dest} are on different file systems; reflink needs one"
                    ) from exc
                raise RuntimeFailure(f"reflink of {image} failed: {exc.strerror}") from exc
            _own(dest, uid, gid, 0o600)
            return CowView(method="reflink", path=dest)
        return await self._dm_view(image, dest, uid=uid, gid=gid)

    async def _dm_view(self, image: Path, dest: Path, *, uid: int, gid: int) -> CowView:
        size = _size(image)
        sectors = size // 512
        origin = self._base_loops.get(image)
        if origin is None:
            origin = (await _run("losetup", "--find", "--show", "--read-only", str(image))).strip()
            self._base_loops[image] = origin
        cow_file = dest.with_suffix(".cow")
        _sparse_file(cow_file, size)
        cow_loop = (await _run("losetup", "--find", "--show", str(cow_file))).strip()
        name = "zw-" + dest.parent.parent.name
        try:
            table = dm_snapshot_table(sectors=sectors, origin=origin, cow=cow_loop)
            await _run("dmsetup", "create", name, "--table", table)
            try:
                device = os.stat(f"/dev/mapper/{name}")
                os.mknod(dest, stat.S_IFBLK | 0o600, device.st_rdev)
                os.chown(dest, uid, gid)
            except OSError as exc:
                raise RuntimeFailure(
                    f"device-mapper snapshot {name} is not usable: {exc.strerror}"
                ) from exc
        except BaseException:
            with contextlib.suppress(RuntimeFailure):
                await _run("dmsetup", "remove", name)
            with contextlib.suppress(RuntimeFailure):
                await _run("losetup", "-d", cow_loop)
            await asyncio.to_thread(_unlink_view, dest)
            raise
        return CowView(method="dm-snapshot", path=dest, dm_name=name, loops=(cow_loop,))

    async def remove_view(self, view: CowView) -> None:
        """Remove a view (idempotent): the dm device and its loop, or the reflinked file."""
        if view.dm_name:
            with contextlib.suppress(RuntimeFailure):
                await _run("dmsetup", "remove", view.dm_name)
        for loop_dev in view.loops:
            with contextlib.suppress(RuntimeFailure):
                await _run("losetup", "-d", loop_dev)
        await asyncio.to_thread(_unlink_view, view.path)


def _is_dir(path: Path) -> bool:
    return path.is_dir()


def _is_file(path: Path) -> bool:
    return path.is_file()


def _size(path: Path) -> int:
    return path.stat().st_size


def _sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid)
    path.chmod(mode)


def _unlink_view(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".cow").unlink(missing_ok=True)


def _rmdirs(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()
