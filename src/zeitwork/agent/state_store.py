"""Per-instance records on disk, each written atomically (temp file, fsync, rename).

A record is whatever JSON the supervisor keeps for one instance: its assignment, the driver
handle, its address and its last known state. A crash mid-write leaves the old file intact.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: Path, value: Any, *, mode: int = 0o644) -> None:
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode(), mode=mode)


class StateStore:
    """One JSON file per instance under ``root`` (``<uuid>.json``)."""

    def __init__(self, *, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, instance_id: uuid.UUID) -> Path:
        return self.root / f"{instance_id}.json"

    def save(self, instance_id: uuid.UUID, record: Mapping[str, Any]) -> None:
        atomic_write_json(self._path(instance_id), dict(record), mode=0o600)

    def delete(self, instance_id: uuid.UUID) -> None:
        self._path(instance_id).unlink(missing_ok=True)

    def load_all(self) -> dict[uuid.UUID, dict[str, Any]]:
        """Every readable record; unreadable ones are moved aside (``.corrupt``), not lost."""
        records: dict[uuid.UUID, dict[str, Any]] = {}
        for path in sorted(self.root.glob("*.json")):
            try:
                instance_id = uuid.UUID(path.stem)
                value = json.loads(path.read_text())
                if not isinstance(value, dict):
                    raise ValueError("record is not an object")
            except (ValueError, OSError):
                path.rename(path.with_suffix(".corrupt"))
                continue
            records[instance_id] = value
        return records
