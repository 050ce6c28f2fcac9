"""Atomic file replacement: readers see the old file or the new one, never half of one.

Every service keeps files (instance records, route caches, ids, tokens, stats, certificates,
image blobs, microVM root file systems): they are all put in place here, one way. The data
goes to a temp file (in the target's directory unless told otherwise: a rename is atomic
only within one file system), is fsynced, gets its mode, is renamed over the target, and the
directory is fsynced so that the rename itself survives a crash. A failure at any step
removes the temp file and leaves the old file as it was.

``atomic_write`` does it for bytes in memory. A file made another way (a program writes it,
a stream fills it, its name follows from its content) is a ``PendingFile``: the caller fills
its temp path, and the end of the ``with`` (or ``async with``) block commits it.
``commit_file`` is the last step alone, for a finished temp file that already exists.

``durable=False`` skips both fsyncs: for files whose loss in a power cut costs nothing
(per-worker stats rewritten every second) or is found and repaired on the next start; the
rename is still atomic for readers.

Directories are not written here: a tree built in a scratch directory and renamed into
place (an unpacked layer, an image, a build context) is one ``rename(2)`` at its call site.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO


def temp_path(path: Path, directory: Path | None = None) -> Path:
    """A fresh name for a temp file that will replace ``path``, in ``directory`` (default:
    beside ``path``); hidden, and unique per process and call."""
    where = path.parent if directory is None else directory
    return where / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def commit_file(temp: Path, path: Path, *, mode: int | None = None, durable: bool = True) -> None:
    """Blocking: move the finished file ``temp`` over ``path`` (same file system): fsync it,
    give it ``mode`` (``None``: keep its own), rename, fsync ``path``'s directory. ``temp``
    is removed when a step fails."""
    try:
        if durable:
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if mode is not None:
            os.chmod(temp, mode)  # also narrows what a program or the umask gave it
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class PendingFile:
    """The next version of ``path``, filled by the caller at ``temp``, put in place when the
    block ends and removed if it raises::

        async with PendingFile(image, mode=0o444) as pending:
            await run("mkfs.ext4", ..., str(pending.temp))

    ``async with`` runs the commit (its fsyncs) in a worker thread; ``with`` runs it here.
    ``open()`` gives the temp file for streaming into. When the name follows from the
    content (a blob named by its digest), set ``path`` inside the block; it must be on the
    temp file's file system. Parent directories are made as needed.
    """

    def __init__(
        self,
        path: Path,
        *,
        mode: int = 0o644,
        durable: bool = True,
        temp_dir: Path | None = None,
    ) -> None:
        self.path = path
        self.mode = mode
        self.durable = durable
        path.parent.mkdir(parents=True, exist_ok=True)
        if temp_dir is not None:
            temp_dir.mkdir(parents=True, exist_ok=True)
        self.temp = temp_path(path, temp_dir)

    def open(self) -> BinaryIO:
        """The temp file, created now (it must not exist) with ``mode``, open for writing."""
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.mode)
        return os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Blocking: put the temp file in place (``commit_file``)."""
        commit_file(self.temp, self.path, mode=self.mode, durable=self.durable)

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    async def __aenter__(self) -> PendingFile:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await asyncio.to_thread(self.commit)
        else:
            self.discard()


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    durable: bool = True,
    temp_dir: Path | None = None,
) -> None:
    """Replace ``path`` with ``data`` (created with ``mode``; parents made as needed). A
    store that empties its own tmp/ on start passes it as ``temp_dir`` for the leftovers."""
    pending = PendingFile(path, mode=mode, durable=durable, temp_dir=temp_dir)
    with pending, pending.open() as handle:
        handle.write(data)


def atomic_write_text(
    path: Path,
    text: str,
    *,
    mode: int = 0o644,
    durable: bool = True,
    temp_dir: Path | None = None,
) -> None:
    atomic_write(path, text.encode(), mode=mode, durable=durable, temp_dir=temp_dir)


def encode_json(value: Any) -> bytes:
    """The JSON records are kept in: indented, keys sorted (stable diffs, readable by hand)."""
    return json.dumps(value, indent=1, sort_keys=True).encode()


def atomic_write_json(path: Path, value: Any, *, mode: int = 0o644) -> None:
    atomic_write(path, encode_json(value), mode=mode)
