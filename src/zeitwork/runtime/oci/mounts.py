"""The instance's root filesystem: an overlay of a private writable layer over the shared,
read-only image layers (the layer store's directories, top first) or an image tree unpacked
whole, mounted with mount(2) directly (no ``mount`` process per start)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path

MNT_DETACH = 2
MS_RDONLY = 1
_MAX_OPTIONS = 4095  # mount(2) takes one page of options
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def mount_overlay(
    *, lower: Path | Sequence[Path], upper: Path | None, work: Path | None, target: Path
) -> None:
    """Mount an overlay at ``target``: ``lower`` one tree or layers top first; without
    ``upper`` and ``work`` it is read-only (overlayfs then wants two lower layers)."""
    lowers = [lower] if isinstance(lower, Path) else list(lower)
    paths = [*lowers, *(p for p in (upper, work) if p is not None)]
    if not lowers or any(ch in str(p) for p in paths for ch in ",:"):
        raise OSError(22, "overlay paths must not contain ',' or ':'", str(target))
    options = "lowerdir=" + ":".join(str(p) for p in lowers)
    flags = 0
    if upper is not None and work is not None:
        options += f",upperdir={upper},workdir={work}"
    else:
        flags = MS_RDONLY
    if len(options) > _MAX_OPTIONS:
        raise OSError(7, f"{len(lowers)} image layers are too many for one overlay", str(target))
    result = _libc.mount(b"overlay", str(target).encode(), b"overlay", flags, options.encode())
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"overlay mount failed: {os.strerror(err)}", str(target))


def is_mounted(target: Path) -> bool:
    wanted = str(target)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as info:
            return any(line.split()[4] == wanted for line in info)
    except OSError:
        return False


def unmount(target: Path) -> None:
    """Detach the mount at ``target`` if there is one (idempotent)."""
    while is_mounted(target):
        if _libc.umount2(str(target).encode(), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unmount failed: {os.strerror(err)}", str(target))
