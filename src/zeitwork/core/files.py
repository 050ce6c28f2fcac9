"""Atomic file replacement: readers see the old file or the new one, never half of one.

Every service keeps small files (instance records, route caches, ids, tokens, stats): they
are all written here, one way. The data goes to a temp file in the same directory (a rename
is atomic only within one file system), is flushed and fsynced, gets its mode, is renamed
over the target, and the directory is fsynced so that the rename itself survives a crash.
A failure at any step removes the temp file and leaves the old file as it was.

``durable=False`` skips both fsyncs: for files rewritten every second whose loss in a power
cut costs nothing (per-worker stats); the rename is still atomic for readers.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (created with ``mode``; parents made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed the mode os.open gave
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_text(path: Path, text: str, *, mode: int = 0o644, durable: bool = True) -> None:
    atomic_write(path, text.encode(), mode=mode, durable=durable)


def encode_json(value: Any) -> bytes:
    """The JSON records are kept in: indented, keys sorted (stable diffs, readable by hand)."""
    return json.dumps(value, indent=1, sort_keys=True).encode()


def atomic_write_json(path: Path, value: Any, *, mode: int = 0o644) -> None:
    atomic_write(path, encode_json(value), mode=mode)
