"""Size-capped, rotated console logs: the container writes (O_APPEND) straight into
``console.log``; housekeeping copies it to ``console.log.1`` (shifting older ones) and
truncates it once it passes the cap. Writers keep appending at the new end, so the log
survives agent restarts without a pump process. Lines written between the copy and the
truncate can be lost (the same trade-off as logrotate's ``copytruncate``)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

CHUNK = 64 * 1024


def open_for_container(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)


def rotate(path: Path, *, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` when bigger than ``max_bytes``; True when it did."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    for index in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{index + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as handle:
        handle.truncate(0)
    return True


def _tail_bytes(path: Path, lines: int, end: int | None = None) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            limit = size if end is None else min(end, size)
            position = limit
            data = b""
            while position > 0 and data.count(b"\n") <= lines:
                step = min(CHUNK, position)
                position -= step
                handle.seek(position)
                data = handle.read(step) + data
            return data[: limit - position]
    except FileNotFoundError:
        return b""


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def tail(path: Path, lines: int, *, keep: int, end: int | None = None) -> list[str]:
    """The last ``lines`` lines over the rotated files and the current one (the current one
    read up to byte ``end`` when given, so that a follow continues exactly there)."""
    if lines <= 0:
        return []
    collected: list[str] = []
    files = [path.with_name(f"{path.name}.{i}") for i in range(keep, 0, -1)] + [path]
    for file in reversed(files):
        limit = end if file == path else None
        text = _tail_bytes(file, lines - len(collected), limit).decode(errors="replace")
        chunk = text.splitlines()
        collected = chunk[-(lines - len(collected)) :] + collected
        if len(collected) >= lines:
            break
    return collected[-lines:]


def _read_new(path: Path, position: int) -> tuple[int, bytes] | None:
    """(new position, bytes appended since ``position``); None when the file is gone."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size < position:  # rotated (truncated)
        position = 0
    if size == position:
        return position, b""
    with open(path, "rb") as handle:
        handle.seek(position)
        data = handle.read(size - position)
    return position + len(data), data


async def follow(
    path: Path, *, alive: Callable[[], bool], poll: float = 0.2, start: int | None = None
) -> AsyncIterator[str]:
    """Lines appended to ``path`` after byte ``start`` (default: its current end) until
    ``alive()`` is false and nothing more came."""
    if start is None:
        first = _read_new(path, 0)
        position = first[0] if first is not None else 0
    else:
        position = start
    pending = b""
    while True:
        still_alive = alive()
        result = _read_new(path, position)
        if result is None:
            return
        position, data = result
        if data:
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
            continue
        if not still_alive:
            if pending:
                yield pending.decode(errors="replace")
            return
        await asyncio.sleep(poll)
