"""Blocking helpers for unpacked image trees: confined reads and disk usage."""

from __future__ import annotations

import errno
import os
import stat
from collections import deque
from pathlib import Path

from zeitwork.core.errors import InvalidInput

_MAX_LINKS = 40


def resolve_confined(root: Path, path: str) -> Path:
    """Resolve ``path`` inside ``root`` as if ``root`` were ``/`` (like ``chroot``): absolute
    symlinks restart at ``root`` and ``..`` stops at it, so nothing resolves outside."""
    parts = deque(p for p in path.split("/") if p not in ("", "."))
    current: list[str] = []
    links = 0
    while parts:
        part = parts.popleft()
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        try:
            mode = candidate.lstat().st_mode
        except FileNotFoundError:
            current.append(part)
            current.extend(p for p in parts if p not in ("", "."))
            return root.joinpath(*current)
        if stat.S_ISLNK(mode):
            links += 1
            if links > _MAX_LINKS:
                raise InvalidInput(f"too many symbolic links resolving {path!r} in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        current.append(part)
    return root.joinpath(*current)


def read_confined(root: Path, path: str, *, limit: int = 1024 * 1024) -> str | None:
    """Text of a regular file inside the tree (``None`` if absent or not a regular file)."""
    target = resolve_confined(root, path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EACCES):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")
    finally:
        os.close(fd)


def tree_size(root: Path) -> int:
    """Bytes the tree occupies on disk (allocated blocks; hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            try:
                info = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += info.st_blocks * 512
    return total + os.lstat(root).st_blocks * 512
