"""Size-capped, rotated console logs, in one of two shapes:

- records (containers started now): a capture process beside the container
  (``logshim.py``) reads its stdout and stderr pipes and writes one record per line,
  ``<RFC 3339 with ns> <stdout|stderr> <F|P> <text>``, renaming the file away to
  ``console.log.1`` (older ones shifted) before it passes the cap: no line is lost;
- plain lines (containers started by an older agent, still running): the container writes
  (O_APPEND) straight into ``console.log``; housekeeping copies it to ``console.log.1`` and
  truncates it once it passes the cap (lines written between the copy and the truncate can
  be lost, logrotate's ``copytruncate`` trade-off). Their entries carry no time and stream
  ``stdout``.

``follow`` reads through both kinds of rotation: after a rename it finishes the old file
before it starts on the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeitwork.runtime.base import LogEntry

CHUNK = 64 * 1024
_TS_LENGTH = len("2026-12-07T09:30:01.123456789Z")


def parse_record(line: str) -> LogEntry | None:
    """A capture record (``<ts> <stream> <F|P> <text>``) as an entry; None when the line is
    not one (pure)."""
    if len(line) < _TS_LENGTH + 9 or line[_TS_LENGTH] != " " or line[_TS_LENGTH - 1] != "Z":
        return None
    ts = line[:_TS_LENGTH]
    if ts[4] != "-" or ts[10] != "T" or ts[19] != "." or not ts[20:-1].isdigit():
        return None
    rest = line[_TS_LENGTH + 1 :]
    if rest.startswith("stdout "):
        stream: str = "stdout"
    elif rest.startswith("stderr "):
        stream = "stderr"
    else:
        return None
    flag, text = rest[7:9], rest[9:]
    if flag not in ("F ", "P "):
        if rest[7:] in ("F", "P"):  # an empty line
            flag, text = rest[7:] + " ", ""
        else:
            return None
    return LogEntry(
        text=text,
        stream="stderr" if stream == "stderr" else "stdout",
        ts=ts,
        partial=flag == "P ",
    )


def entry_of(line: str) -> LogEntry:
    """A line of a console log as an entry: a record parsed, any other line (a file written
    before records, a cut-off piece) as plain text with no time (pure)."""
    parsed = parse_record(line)
    return parsed if parsed is not None else LogEntry(text=line)


def holds_records(path: Path) -> bool:
    """Whether the file's first line is a capture record."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1024).decode(errors="replace").rstrip("\n")
    except FileNotFoundError:
        return False
    return parse_record(first) is not None


def open_for_container(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)


SHIM = Path(__file__).with_name("logshim.py")
PIPE_BYTES = 1024 * 1024
"""Pipe buffer asked for each stream (a burst the capture has not read yet waits there)."""
_F_SETPIPE_SZ = 1031


@dataclass(frozen=True, slots=True)
class Capture:
    pid: int
    stdout: int  # the pipes' write ends, for the container (the caller closes them)
    stderr: int


def _high_fd(fd: int) -> int:
    """A copy of ``fd`` numbered 10 or more (so dup2 onto 3 and 4 never meets itself)."""
    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return copy


def spawn_capture(path: Path, *, max_bytes: int, keep: int) -> Capture:
    """Start the capture process (``logshim.py``) writing records to ``path``; the
    container gets the returned write ends as its stdout and stderr."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    out_r, err_r = _high_fd(out_r), _high_fd(err_r)
    for fd in (out_w, err_w):
        with contextlib.suppress(OSError):  # a bigger buffer is a nicety
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)
    argv = [sys.executable, "-I", str(SHIM), str(path), str(max_bytes), str(keep)]
    try:
        pid = os.posix_spawn(
            sys.executable,
            argv,
            {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_r, 3),
                (os.POSIX_SPAWN_DUP2, err_r, 4),
            ],
            setsid=True,  # outlives an agent that is restarted or killed
        )
    except OSError:
        for fd in (out_w, err_w):
            os.close(fd)
        raise
    finally:
        os.close(out_r)
        os.close(err_r)
    return Capture(pid=pid, stdout=out_w, stderr=err_w)


def rotate(path: Path, *, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` when bigger than ``max_bytes``; True when it did."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    # rotation renames finished files down the line; nothing is written in place by these
    # renames, so core/files.py does not apply
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


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def _drain(handle: Any) -> bytes:
    return bytes(handle.read(CHUNK * 16))


async def follow(
    path: Path, *, alive: Callable[[], bool], poll: float = 0.2, start: int | None = None
) -> AsyncIterator[str]:
    """Lines appended to ``path`` after byte ``start`` (default: its current end) until
    ``alive()`` is false and nothing more came. A file renamed away (rotated) is read to its
    end and then the new one from its start; a file truncated in place from its start."""
    handle: Any = None
    pending = b""
    try:
        while handle is None:
            try:
                handle = open(path, "rb")  # noqa: SIM115, ASYNC230 (kept open across rotations; local)
            except FileNotFoundError:
                if not alive():
                    return
                await asyncio.sleep(poll)
        size = os.fstat(handle.fileno()).st_size
        handle.seek(size if start is None else min(start, size))
        while True:
            still_alive = alive()
            data = _drain(handle)  # a small read of a local file, as before
            if not data:
                current = _inode(path)
                opened = os.fstat(handle.fileno())
                if current is not None and current != opened.st_ino:  # renamed away
                    data = bytes(handle.read())  # its very last bytes, all of them
                    handle.close()
                    handle = open(path, "rb")  # noqa: SIM115, ASYNC230
                    if not data:
                        continue
                elif opened.st_size < handle.tell():  # truncated in place
                    handle.seek(0)
                    continue
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
    finally:
        if handle is not None:
            handle.close()
