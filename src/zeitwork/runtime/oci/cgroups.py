"""Reading what the kernel recorded about an instance's cgroup (OOM kills), and removing
leftover cgroups of our own parent. Works on cgroup v1 (also the hybrid layout of this
project's CI machines, where the controllers are v1) and on the unified v2 hierarchy.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP2_MAGIC = 0x63677270


def is_unified(root: Path = CGROUP_ROOT) -> bool:
    """True on a pure cgroup v2 host (``stat -fc %T /sys/fs/cgroup`` says cgroup2fs)."""
    return (root / "cgroup.controllers").exists()


def _hierarchies(root: Path) -> list[Path]:
    if is_unified(root):
        return [root]
    found = []
    for entry in sorted(root.iterdir()) if root.exists() else []:
        if entry.is_dir() and not entry.is_symlink():
            found.append(entry)
    return found


def oom_kills(cgroups_path: str, *, root: Path = CGROUP_ROOT) -> int:
    """How many processes the kernel OOM-killed in the cgroup (0 when unknown)."""
    relative = cgroups_path.lstrip("/")
    if is_unified(root):
        candidates = [(root / relative / "memory.events", "oom_kill")]
    else:
        candidates = [(root / "memory" / relative / "memory.oom_control", "oom_kill")]
    for path, key in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value.strip())
    return 0


def children(parent: str, *, root: Path = CGROUP_ROOT) -> set[str]:
    """Names of cgroups directly under ``parent`` in any hierarchy."""
    names: set[str] = set()
    for hierarchy in _hierarchies(root):
        directory = hierarchy / parent.strip("/")
        if directory.is_dir():
            names.update(entry.name for entry in directory.iterdir() if entry.is_dir())
    return names


def remove(cgroups_path: str, *, root: Path = CGROUP_ROOT) -> bool:
    """rmdir the cgroup in every hierarchy; True if anything was removed (empty ones only)."""
    removed = False
    for hierarchy in _hierarchies(root):
        directory = hierarchy / cgroups_path.strip("/")
        if directory.is_dir():
            try:
                os.rmdir(directory)
                removed = True
            except OSError:
                continue
    return removed
