"""The instance's root filesystem: an overlay of a private writable layer over the shared,
read-only image tree, mounted with mount(2) directly (no ``mount`` process per start)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

MNT_DETACH = 2
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def mount_overlay(*, lower: Path, upper: Path, work: Path, target: Path) -> None:
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if any(ch in str(p) for p in (lower, upper, work) for ch in ",:"):
        raise OSError(22, "overlay paths must not contain ',' or ':'", str(target))
    result = _libc.mount(b"overlay", str(target).encode(), b"overlay", 0, options.encode())
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
