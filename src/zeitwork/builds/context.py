"""Build contexts: pack a source directory into a deterministic tar, unpack one safely.

``pack`` takes the files git tracks (plus untracked files that are not ignored) when the
directory is inside a git work tree, else every file minus the ``.dockerignore`` and
``.gitignore`` patterns. The archive is a gzip-compressed tar whose members are sorted, with
fixed mtimes, owners and modes, so an unchanged directory gives the same bytes and the same
sha256 (the context's address).

``unpack`` is the other side, run on archives from outside: it refuses any member that would
write outside the destination (``..``, absolute names, a symlink or hard link pointing out,
a path through a symlink), device files and fifos, duplicate names, and contents past the
size limit. It extracts into a scratch directory beside the destination and renames it into
place only when every member was accepted, so a refusal leaves nothing behind.

``limit`` is the total size of the file contents in bytes, the same on both sides.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import posixpath
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import pathspec

from zeitwork.core.errors import InvalidInput, PayloadTooLarge

#: The fixed mtime of every member (2023-11-14T22:13:20Z): the archive must not depend on
#: when the files were touched.
MTIME = 1_700_000_000
_CHUNK = 1 << 16
_GIT_TIMEOUT = 60.0


class ContextError(InvalidInput):
    """A build context that cannot be packed or unpacked; the detail names the member."""


class ContextTooLarge(ContextError, PayloadTooLarge):
    """The context's file contents exceed the size limit."""

    title = PayloadTooLarge.title
    code = PayloadTooLarge.code


@dataclass(frozen=True)
class ContextInfo:
    """What ``pack`` wrote: the archive's sha256 (hex) and size in bytes, and its file count."""

    sha256: str
    size: int
    files: int


@dataclass(frozen=True)
class _Member:
    """One file or symlink to pack, by its path relative to the context root."""

    name: str
    path: Path
    symlink: str | None
    executable: bool
    size: int


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through to ``out``."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._hash.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# --------------------------------------------------------------------------------- pack


def pack(directory: Path, out: BinaryIO, *, limit: int) -> ContextInfo:
    """Write ``directory``'s build context to ``out`` as a deterministic tar.gz.

    Raises ``ContextTooLarge`` when the file contents exceed ``limit`` bytes (before anything
    large is written) and ``ContextError`` for a symlink pointing outside the directory.
    """
    root = directory.resolve()
    if not root.is_dir():
        raise ContextError(f"{directory} is not a directory")
    names = _git_files(root)
    if names is None:
        names = _walk_files(root)
    members = sorted(_members(root, names), key=lambda m: m.name)
    total = sum(m.size for m in members)
    if total > limit:
        raise ContextTooLarge(
            f"the build context is {total} bytes, over the limit of {limit} bytes",
            extra={"size": total, "limit": limit},
        )
    writer = _HashingWriter(out)
    # filename="" and mtime=0 keep the gzip header free of names and times.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=writer, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in members:
            _add(tar, member)
    writer.flush()
    return ContextInfo(sha256=writer.hexdigest(), size=writer.size, files=len(members))


def _add(tar: tarfile.TarFile, member: _Member) -> None:
    info = tarfile.TarInfo(member.name)
    info.mtime = MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if member.symlink is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = member.symlink
        info.mode = 0o777
        tar.addfile(info)
        return
    info.mode = 0o755 if member.executable else 0o644
    with member.path.open("rb") as f:
        info.size = os.fstat(f.fileno()).st_size
        if info.size != member.size:
            raise ContextError(f"{member.name} changed while the context was being packed")
        tar.addfile(info, f)


def _members(root: Path, names: Iterator[str]) -> Iterator[_Member]:
    for name in names:
        path = root / name
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue  # tracked by git but deleted in the work tree
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(path)
            if _escapes(name, target):
                raise ContextError(f"{name} is a symlink pointing outside the context ({target})")
            yield _Member(name, path, target, False, 0)
        elif stat.S_ISREG(st.st_mode):
            yield _Member(name, path, None, bool(st.st_mode & 0o111), st.st_size)
        # directories (git submodules), sockets, fifos and devices are not part of a context


def _git_files(root: Path) -> Iterator[str] | None:
    """The files git would commit (tracked, and untracked but not ignored), or None."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        inside = subprocess.run(
            [git, "-C", str(root), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    try:
        listed = subprocess.run(
            [git, "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            timeout=_GIT_TIMEOUT,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ContextError(f"git ls-files failed in {root}: {exc}") from exc
    # --cached lists a file twice while it has merge conflicts; dict keeps the order, once.
    output = listed.stdout.decode("utf-8", "surrogateescape")
    return iter(dict.fromkeys(n for n in output.split("\0") if n))


def _walk_files(root: Path) -> Iterator[str]:
    """Every file under ``root`` that neither ``.dockerignore`` nor a ``.gitignore`` excludes."""
    docker = _DockerIgnore.load(root / ".dockerignore")
    # (directory relative to root, its .gitignore) from the root down to the current one
    stack: list[tuple[str, pathspec.GitIgnoreSpec]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        stack = [(base, spec) for base, spec in stack if _is_within(rel_dir, base)]
        gitignore = Path(dirpath) / ".gitignore"
        if gitignore.is_file():
            lines = gitignore.read_text(encoding="utf-8", errors="replace").splitlines()
            stack.append((rel_dir, pathspec.GitIgnoreSpec.from_lines(lines)))
        kept_dirs = []
        for name in sorted(dirnames):
            rel = posixpath.join(rel_dir, name)
            if name == ".git":
                continue
            if (Path(dirpath) / name).is_symlink():
                filenames.append(name)  # a symlink to a directory is packed as the link
                continue
            if _git_ignored(stack, rel, is_dir=True) or docker.ignored(rel):
                continue
            kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            rel = posixpath.join(rel_dir, name)
            if not _git_ignored(stack, rel, is_dir=False) and not docker.ignored(rel):
                yield rel


def _is_within(path: str, base: str) -> bool:
    return base in ("", path) or path.startswith(base + "/")


def _git_ignored(
    stack: list[tuple[str, pathspec.GitIgnoreSpec]], rel: str, *, is_dir: bool
) -> bool:
    """gitignore semantics: the deepest .gitignore with a matching pattern decides."""
    for base, spec in reversed(stack):
        sub = rel[len(base) + 1 :] if base else rel
        result = spec.check_file(sub + "/" if is_dir else sub)
        if result.include is not None:
            return bool(result.include)
    return False


class _DockerIgnore:
    """``.dockerignore`` semantics: patterns are anchored at the context root, ``**`` spans
    directories, ``!`` re-includes, the last matching pattern wins, and a pattern that
    matches a directory excludes everything in it."""

    def __init__(self, rules: list[tuple[re.Pattern[str], bool]]) -> None:
        self._rules = rules

    @classmethod
    def load(cls, path: Path) -> _DockerIgnore:
        if not path.is_file():
            return cls([])
        rules: list[tuple[re.Pattern[str], bool]] = []
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:].strip()
            line = posixpath.normpath(line).lstrip("/")
            if line in ("", "."):
                continue
            rules.append((re.compile(_docker_regex(line)), negate))
        return cls(rules)

    def ignored(self, rel: str) -> bool:
        if not self._rules:
            return False
        parts = rel.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        ignored = False
        for regex, negate in self._rules:
            if any(regex.fullmatch(c) for c in candidates):
                ignored = not negate
        return ignored


def _docker_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")  # "**/" matches zero or more directories
            else:
                out.append(".*")
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                if body.startswith("^") or body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _escapes(name: str, target: str) -> bool:
    """True when a symlink at ``name`` with ``target`` resolves outside the context root."""
    if target.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    return resolved == ".." or resolved.startswith("../")


# ------------------------------------------------------------------------------- unpack


def unpack(archive: Path, dest: Path, *, limit: int) -> None:
    """Extract the context ``archive`` (tar, optionally gzip) into ``dest``, all or nothing.

    ``dest`` must not exist (or be an empty directory). Raises ``ContextError`` naming the
    first refused member, ``ContextTooLarge`` past ``limit`` bytes of file contents.
    """
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ContextError(f"{dest} already exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpacking-", dir=dest.parent))
    try:
        _extract(archive, scratch, limit=limit)
        os.chmod(scratch, 0o755)  # noqa: S103 - a build context is readable, as a checkout is
        # a tree, not a file (core/files.py writes files): one rename(2) of the directory,
        # which replaces an empty one; a refusal leaves it
        scratch.rename(dest)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _extract(archive: Path, root: Path, *, limit: int) -> None:
    seen: dict[str, str] = {}  # member name -> "file" | "dir" | "symlink"
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                name = _normalise(member.name)
                if name is None:
                    continue  # the root itself ("." or "./")
                if name in seen:
                    raise ContextError(f"{member.name!r} appears twice in the context")
                _check_parents(name, seen, member.name)
                try:
                    total = _extract_member(tar, member, name, root, seen, total, limit)
                except OSError as exc:
                    raise ContextError(
                        f"{member.name!r} could not be extracted: {exc.strerror or exc}"
                    ) from exc
        _check_symlinks(root, [n for n, kind in seen.items() if kind == "symlink"])
    except ContextError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, gzip.BadGzipFile) as exc:
        raise ContextError(f"the context archive is not a readable tar: {exc}") from exc


def _extract_member(  # noqa: PLR0917 - one private step of _extract's loop
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    name: str,
    root: Path,
    seen: dict[str, str],
    total: int,
    limit: int,
) -> int:
    """Write one accepted member; returns the running total of file contents."""
    if member.isdir():
        (root / name).mkdir(mode=0o755, parents=True, exist_ok=True)
        seen[name] = "dir"
    elif member.issym():
        if _escapes(name, member.linkname):
            raise ContextError(
                f"{member.name!r} is a symlink pointing outside the context ({member.linkname!r})"
            )
        _parent(root, name)
        os.symlink(member.linkname, root / name)
        seen[name] = "symlink"
    elif member.islnk():
        target = _normalise(member.linkname)
        if target is None or seen.get(target) != "file":
            raise ContextError(
                f"{member.name!r} is a hard link to {member.linkname!r}, "
                "which is not a file earlier in the context"
            )
        _parent(root, name)
        os.link(root / target, root / name, follow_symlinks=False)
        seen[name] = "file"
    elif member.isreg():
        total += member.size
        if total > limit:
            raise ContextTooLarge(
                f"the build context exceeds the limit of {limit} bytes (at {member.name!r})",
                extra={"limit": limit},
            )
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise ContextError(f"{member.name!r} has no data")
        with source:
            _write_file(root, name, source, executable=bool(member.mode & 0o111))
        seen[name] = "file"
    else:
        kind = _KINDS.get(member.type, f"type {member.type!r}")
        raise ContextError(f"{member.name!r} is a {kind}, not allowed in a context")
    return total


def _check_symlinks(root: Path, names: list[str]) -> None:
    """Each symlink resolved on disk, through any chain of other links, stays inside root.

    Every link was checked on its own when it was written; a chain of links that are each
    inside can still lead out (``a/b/s -> ../../..`` and ``t -> a/b/s/..``), which only
    the resolved path shows once all of them exist.
    """
    real_root = os.path.realpath(root)
    for name in names:
        resolved = os.path.realpath(root / name)
        if resolved != real_root and not resolved.startswith(real_root + os.sep):
            raise ContextError(f"{name!r} is a symlink that resolves outside the context")


_KINDS = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CONTTYPE: "contiguous file",
}


def _normalise(raw: str) -> str | None:
    """The member name relative to the root, or None for the root; refuses escapes."""
    if raw.startswith("/"):
        raise ContextError(f"{raw!r} is an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ContextError(f"{raw!r} contains '..'")
    if "\0" in raw:
        raise ContextError(f"{raw!r} contains a NUL byte")
    return "/".join(parts) if parts else None


def _check_parents(name: str, seen: dict[str, str], raw: str) -> None:
    parts = name.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        kind = seen.get(parent)
        if kind == "symlink":
            raise ContextError(f"{raw!r} passes through the symlink {parent!r}")
        if kind == "file":
            raise ContextError(f"{raw!r} is inside {parent!r}, which is a file")


def _parent(root: Path, name: str) -> None:
    (root / name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)


def _write_file(root: Path, name: str, source: IO[bytes], *, executable: bool) -> None:
    _parent(root, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(root / name, flags, 0o755 if executable else 0o644)
    with os.fdopen(fd, "wb") as f:
        while chunk := source.read(_CHUNK):
            f.write(chunk)
    os.utime(root / name, (MTIME, MTIME), follow_symlinks=False)
