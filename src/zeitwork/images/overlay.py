"""Blocking: the read-only merged view of an image's layers (an overlayfs mount with lower
layers only), mounted with mount(2) directly.

The view is what reads the image as one tree while it is mounted (``ImageCache.view``):
the image user's ``/etc/passwd``, tests. Instances do not run on it: the runc driver mounts
each instance's own overlay over the same layer directories plus the instance's upper one,
and the Firecracker driver mounts its own view for ``mkfs.ext4 -d``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path

_MS_RDONLY = 1
_MNT_DETACH = 2
_MAX_OPTIONS = 4095  # mount(2) takes one page of options
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def lowerdir_option(layers: Sequence[Path]) -> str:
    """``lowerdir=top:...:bottom`` for the layer directories (given top first)."""
    if not layers:
        raise ValueError("an overlay needs at least one layer")
    for layer in layers:
        if any(ch in str(layer) for ch in ",:\\ \n\t"):
            raise OSError(22, "overlay layer paths must not contain ',', ':', '\\' or spaces")
    return "lowerdir=" + ":".join(str(layer) for layer in layers)


def mount_view(layers: Sequence[Path], target: Path, *, empty: Path) -> None:
    """Mount the read-only overlay of ``layers`` (top first) at ``target``. A single layer
    gets ``empty`` (an empty directory) below it: overlayfs wants two lower layers when it
    has no upper one."""
    lowers = list(layers) if len(layers) > 1 else [*layers, empty]
    options = lowerdir_option(lowers)
    if len(options) > _MAX_OPTIONS:
        raise OSError(7, f"{len(layers)} layers are too many for one overlay mount", str(target))
    result = _libc.mount(b"overlay", str(target).encode(), b"overlay", _MS_RDONLY, options.encode())
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"overlay mount failed: {os.strerror(err)}", str(target))


def mount_options(target: Path) -> tuple[str, str] | None:
    """(file system type, super options) of the mount at ``target``, or None."""
    wanted = str(target)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as info:
            for line in info:
                fields = line.split()
                if fields[4] != wanted:
                    continue
                tail = fields[fields.index("-") + 1 :]
                return tail[0], tail[2] if len(tail) > 2 else ""
    except (OSError, ValueError, IndexError):
        return None
    return None


def unmount(target: Path) -> None:
    """Detach the mount at ``target`` if there is one (idempotent)."""
    while mount_options(target) is not None:
        if _libc.umount2(str(target).encode(), _MNT_DETACH) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"unmount failed: {os.strerror(err)}", str(target))
