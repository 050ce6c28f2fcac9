"""Blocking: unpack one OCI layer tar into its own directory, as an overlayfs layer.

Each layer is unpacked alone into an empty directory (never on top of the layers below
it), so the OCI whiteouts become overlayfs's:

- ``dir/.wh.name`` → a character device 0/0 ``dir/name`` (overlayfs hides ``name`` of the
  layers below), unless this layer itself has ``dir/name`` (a whiteout applies only to
  the layers below it);
- ``dir/.wh..wh..opq`` → the xattr ``trusted.overlay.opaque=y`` on ``dir`` (nothing of the
  layers below shows through ``dir``; this layer's own entries do);
- a whiteout followed by a directory of the same name in the same layer → that directory,
  opaque (what a flat unpack gives: the old one removed, the new one created).

Refused, with ``InvalidInput`` naming the entry: absolute names and ``..`` components; an
entry whose path passes through a symlink or a file of this layer (nothing is ever written
through a symlink: every parent is a directory this unpack created); hard links to
anything that is not an earlier file of this layer; device files (except under ``dev/``,
which are skipped: the runtimes mount their own ``/dev``). Symlinks are created as they
are and never followed, whatever their targets. Extended attributes come only from
``user.`` and ``security.`` PAX records (a layer never sets ``trusted.overlay.*``).

The blob is read once, as a stream: a second thread reads, hashes and decompresses it while
the calling thread writes the files; with ``digest`` and ``diff_id`` the blob and its
uncompressed bytes must hash to them. Needs root (ownership, device nodes, trusted xattrs).
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import shutil
import stat
import tarfile
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from zeitwork.core.errors import InvalidInput
from zeitwork.images.layout import MAX_LAYER_ENTRIES, _gunzip

OPAQUE_XATTR = "trusted.overlay.opaque"
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_CHUNK = 1 << 20
# tarfile's stream mode copies what is left of its buffer on every read: keep it small
_TAR_BUFFER = 1 << 16
_BLOCK = 4096
_XATTR_PREFIX = "SCHILY.xattr."
_ALLOWED_XATTRS = ("user.", "security.")
# directories a layer implies (parents without entries, its root): as tar and umoci make them
_IMPLIED_DIR = 0o755
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class UnpackResult:
    size: int  # bytes on disk, estimated (regular files rounded up to 4 KiB, plus entries)
    entries: int
    diff_id: str  # sha256 of the uncompressed tar
    skipped_devices: int


def _read_chunks(path: Path) -> Generator[bytes, None, None]:
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _gzipped(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _clean(name: str) -> str | None:
    """The entry's path relative to the layer root (``""`` for the root itself), or None
    if it is unsafe: absolute, with a ``..`` component or a NUL."""
    if name.startswith("/") or "\x00" in name:
        return None
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


class _Layer:
    """One unpack in progress: ``kinds`` knows every path this layer created (``d``
    directory, ``f`` file, ``l`` symlink, ``w`` whiteout, ``o`` other), so no path is ever
    looked up through something the layer did not create as a directory."""

    def __init__(self, root: Path, what: str) -> None:
        self.root = root
        self.what = what
        self.kinds: dict[str, str] = {"": "d"}
        self.dirs: dict[str, tarfile.TarInfo] = {}
        self.size = 0
        self.entries = 0
        self.skipped_devices = 0

    def _refuse(self, name: str, why: str) -> InvalidInput:
        return InvalidInput(f"{self.what} entry {name[:200]!r} {why}")

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else str(self.root)

    def _parents(self, name: str, parent: str) -> None:
        if not parent:
            return
        prefix = ""
        for part in parent.split("/"):
            prefix = f"{prefix}/{part}" if prefix else part
            kind = self.kinds.get(prefix)
            if kind == "d":
                continue
            path = self._path(prefix)
            if kind is None:
                os.mkdir(path)
                os.chmod(path, _IMPLIED_DIR)  # whatever the umask
            elif kind == "w":  # whited out, then filled again in this layer
                os.unlink(path)
                os.mkdir(path)
                os.chmod(path, _IMPLIED_DIR)
                os.setxattr(path, OPAQUE_XATTR, b"y")
            elif kind == "l":
                raise self._refuse(name, f"passes through the symlink {prefix!r}")
            else:
                raise self._refuse(name, f"passes through {prefix!r}, which is not a directory")
            self.kinds[prefix] = "d"
            self.size += _BLOCK

    def _clear(self, name: str) -> str | None:
        """Remove what this layer has at ``name`` (not a directory); its kind before."""
        kind = self.kinds.pop(name, None)
        if kind == "d":
            shutil.rmtree(self._path(name))
            inside = name + "/"
            for key in [k for k in self.kinds if k.startswith(inside)]:
                del self.kinds[key]
            self.dirs = {k: v for k, v in self.dirs.items() if not k.startswith(inside)}
            self.dirs.pop(name, None)
        elif kind is not None:
            os.unlink(self._path(name))
        return kind

    def _owner(self, path: str, member: tarfile.TarInfo, *, fd: int | None = None) -> None:
        if fd is not None:
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
        else:
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
            os.chmod(path, member.mode & 0o7777)

    def _xattrs(self, target: str | int, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(_XATTR_PREFIX):
                continue
            name = key[len(_XATTR_PREFIX) :]
            if not name.startswith(_ALLOWED_XATTRS):
                continue
            data = value.encode("utf-8", "surrogateescape")
            if isinstance(target, int):
                os.setxattr(target, name, data)
            else:
                os.setxattr(target, name, data, follow_symlinks=False)

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        self.entries += 1
        if self.entries > MAX_LAYER_ENTRIES:
            raise InvalidInput(f"{self.what} has more than {MAX_LAYER_ENTRIES} entries")
        raw = member.name
        name = _clean(raw)
        if name is None:
            raise self._refuse(raw, "has an unsafe path")
        if not name:
            if member.isdir():
                self.dirs[""] = member
                return
            raise self._refuse(raw, "is the layer's root but not a directory")
        parent, _, base = name.rpartition("/")
        if base.startswith(_WHITEOUT):
            self._whiteout(raw, parent, base)
            return
        self._parents(raw, parent)
        path = self._path(name)
        if member.isdir():
            kind = self.kinds.get(name)
            if kind != "d":
                self._clear(name)
                os.mkdir(path, 0o700)
                if kind == "w":
                    os.setxattr(path, OPAQUE_XATTR, b"y")
                self.kinds[name] = "d"
                self.size += _BLOCK
            self.dirs[name] = member
            return
        if member.ischr() or member.isblk():
            if name.split("/", 1)[0] == "dev":
                self.skipped_devices += 1
                return
            raise self._refuse(raw, "is a device file (only whiteouts are allowed)")
        if member.islnk():
            link = _clean(member.linkname)
            if link is None or self.kinds.get(link) not in ("f", "l"):
                raise self._refuse(
                    raw, "is a hard link to something that is not a file of this layer"
                )
            if link == name:
                return
            self._clear(name)
            os.link(self._path(link), path, follow_symlinks=False)
            self.kinds[name] = "f"
            return
        self._clear(name)
        if member.isreg():
            fd = os.open(path, _OPEN_FLAGS, 0o600)
            try:
                source = tar.extractfile(member)
                if source is not None:
                    _copy(source, fd, member.size)
                self._owner(path, member, fd=fd)
                self._xattrs(fd, member)
                os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)
            self.kinds[name] = "f"
            self.size += -(-member.size // _BLOCK) * _BLOCK
        elif member.issym():
            os.symlink(member.linkname, path)
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
            self._xattrs(path, member)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
            self.kinds[name] = "l"
        elif member.isfifo():
            os.mkfifo(path, 0o600)
            self._owner(path, member)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
            self.kinds[name] = "o"
        else:
            raise self._refuse(raw, f"has an unsupported tar type {member.type!r}")

    def _whiteout(self, raw: str, parent: str, base: str) -> None:
        self._parents(raw, parent)
        if base == _OPAQUE:
            os.setxattr(self._path(parent), OPAQUE_XATTR, b"y")
            return
        if base.startswith(_WHITEOUT + _WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk, ...): nothing to apply
        target = base[len(_WHITEOUT) :]
        if target in ("", ".", ".."):
            raise self._refuse(raw, "has an unsafe path")
        hidden = f"{parent}/{target}" if parent else target
        if hidden in self.kinds:
            return  # this layer has it: a whiteout hides only the layers below
        os.mknod(self._path(hidden), stat.S_IFCHR | 0o600, os.makedev(0, 0))
        self.kinds[hidden] = "w"

    def finish(self) -> None:
        """Directory ownership, modes and times, last (their entries changed the mtimes).
        A layer without an entry for its root gets a root directory of mode 0755."""
        if "" not in self.dirs:
            os.chmod(self.root, _IMPLIED_DIR)
        for name, member in self.dirs.items():
            path = self._path(name)
            self._owner(path, member)
            self._xattrs(path, member)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _copy(source: IO[bytes], fd: int, size: int) -> None:
    remaining = size
    while remaining > 0:
        chunk = source.read(min(_CHUNK, remaining))
        if not chunk:
            raise InvalidInput("a layer file ends before its size")
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        remaining -= len(chunk)


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    for chunk in _read_chunks(path):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


class _Pipeline:
    """Reads, hashes and decompresses the blob in a thread of its own (sha256 and zlib
    release the GIL, so this runs beside the unpacking thread's file writes), handing the
    plain tar to the unpack in chunks through a small queue."""

    _DONE = b""

    def __init__(self, blob: Path, what: str) -> None:
        self.blob_hasher = hashlib.sha256()
        self.plain_hasher = hashlib.sha256()
        self.error: BaseException | None = None
        self._blob = blob
        self._what = what
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="layer-read", daemon=True)
        self._thread.start()

    def _put(self, chunk: bytes) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(chunk, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        chunks = _read_chunks(self._blob)
        try:
            raw: Iterator[bytes] = _hashed(chunks, self.blob_hasher)
            plain = _gunzip(raw, self._what) if _gzipped(self._blob) else raw
            for chunk in plain:
                self.plain_hasher.update(chunk)
                if not self._put(chunk):
                    return
        except BaseException as exc:  # handed to the unpacking thread, which raises it
            self.error = exc
        finally:
            chunks.close()
        self._put(self._DONE)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def next_chunk(self) -> bytes:
        chunk = self._queue.get()
        if chunk is self._DONE or not chunk:
            self._thread.join()
            if self.error is not None:
                raise self.error
            return b""
        return chunk


class _PipeReader(io.RawIOBase):
    def __init__(self, pipe: _Pipeline) -> None:
        super().__init__()
        self._pipe = pipe
        self._buf = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._buf and not self._done:
            chunk = self._pipe.next_chunk()
            self._done = not chunk
            self._buf = memoryview(chunk)
        size = min(len(buffer), len(self._buf))
        buffer[:size] = self._buf[:size]
        self._buf = self._buf[size:]
        return size

    def drain(self) -> None:
        """Read to the end (tar padding after the end marker) so every byte is hashed."""
        while not self._done:
            self._done = not self._pipe.next_chunk()
        self._buf = memoryview(b"")


def _hashed(chunks: Iterator[bytes], hasher: Any) -> Iterator[bytes]:
    for chunk in chunks:
        hasher.update(chunk)
        yield chunk


def unpack_layer(
    blob: Path,
    dest: Path,
    *,
    diff_id: str | None = None,
    digest: str | None = None,
    what: str = "layer",
) -> UnpackResult:
    """Unpack the layer ``blob`` (a tar, gzip or not) into ``dest`` (an empty directory).

    Raises ``InvalidInput`` for a hostile or corrupt layer, one whose bytes do not hash to
    ``digest`` or whose uncompressed bytes do not hash to ``diff_id`` (both read in the
    same pass, in a second thread); the caller removes ``dest`` then.
    """
    pipe = _Pipeline(blob, what)
    stream = _PipeReader(pipe)
    layer = _Layer(dest, what)

    def corrupt(exc: BaseException) -> InvalidInput | None:
        pipe.stop()
        if digest is not None and _file_digest(blob) != digest:
            return InvalidInput(f"{what} blob {digest} does not match its sha256")
        return None

    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_TAR_BUFFER) as tar:
            for member in tar:
                layer.add(member, tar)
        stream.drain()
    except tarfile.TarError as exc:
        raise corrupt(exc) or InvalidInput(f"{what} is not a valid tar: {exc}") from exc
    except EOFError as exc:
        raise corrupt(exc) or InvalidInput(f"{what} is truncated") from exc
    except InvalidInput as exc:
        found = corrupt(exc)
        if found is not None:
            raise found from exc
        raise
    finally:
        pipe.stop()
    if digest is not None and "sha256:" + pipe.blob_hasher.hexdigest() != digest:
        raise InvalidInput(f"{what} blob {digest} does not match its sha256")
    layer.finish()
    got = "sha256:" + pipe.plain_hasher.hexdigest()
    if diff_id is not None and got != diff_id:
        raise InvalidInput(f"{what} does not match its diff_id {diff_id} in the image config")
    return UnpackResult(
        size=layer.size, entries=layer.entries, diff_id=got, skipped_devices=layer.skipped_devices
    )
