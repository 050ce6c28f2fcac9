"""Per-instance records on disk, each written atomically (``core.files``: temp file, fsync,
rename).

A record is whatever JSON the supervisor keeps for one instance: its assignment, the driver
handle, its address and its last known state. A crash mid-write leaves the old file intact.

The supervisor saves at every state change from the event loop: ``queue_save`` and
``queue_delete`` snapshot the record at once and hand the blocking write (and fsyncs) to a
thread (``asyncio.to_thread``), one writer per instance, so the operations of one instance
land in the order they were queued (a newer save supersedes a queued, not yet started one)
and a delete is never overtaken by an older save. ``flush`` waits for all of them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from zeitwork.core.files import atomic_write, atomic_write_json, encode_json

log = structlog.get_logger("zeitwork.agent.state_store")


class StateStore:
    """One JSON file per instance under ``root`` (``<uuid>.json``)."""

    def __init__(self, *, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # per instance: the next operation not yet started (bytes to write, or None to
        # delete) and the task performing them
        self._pending: dict[uuid.UUID, bytes | None] = {}
        self._writers: dict[uuid.UUID, asyncio.Task[None]] = {}

    def _path(self, instance_id: uuid.UUID) -> Path:
        return self.root / f"{instance_id}.json"

    def save(self, instance_id: uuid.UUID, record: Mapping[str, Any]) -> None:
        atomic_write_json(self._path(instance_id), dict(record), mode=0o600)

    def delete(self, instance_id: uuid.UUID) -> None:
        self._path(instance_id).unlink(missing_ok=True)

    def queue_save(self, instance_id: uuid.UUID, record: Mapping[str, Any]) -> None:
        """Save from the event loop without blocking it: the record is encoded now (later
        changes to it do not leak in), written in a thread, after this instance's earlier
        queued operations."""
        self._queue(instance_id, encode_json(dict(record)))

    def queue_delete(self, instance_id: uuid.UUID) -> None:
        """Delete after this instance's earlier queued saves (never overtaken by one)."""
        self._queue(instance_id, None)

    def _queue(self, instance_id: uuid.UUID, operation: bytes | None) -> None:
        self._pending[instance_id] = operation
        if instance_id not in self._writers:
            self._writers[instance_id] = asyncio.create_task(
                self._write(instance_id), name=f"state-store-{instance_id}"
            )

    async def _write(self, instance_id: uuid.UUID) -> None:
        try:
            while instance_id in self._pending:
                operation = self._pending.pop(instance_id)
                try:
                    if operation is None:
                        await asyncio.to_thread(self.delete, instance_id)
                    else:
                        await asyncio.to_thread(
                            atomic_write, self._path(instance_id), operation, mode=0o600
                        )
                except OSError as exc:
                    log.error(
                        "instance.record_write_failed", instance_id=str(instance_id), error=str(exc)
                    )
        finally:
            self._writers.pop(instance_id, None)

    async def flush(self) -> None:
        """Wait until every queued operation is on disk (or has failed and been logged)."""
        while self._writers:
            await asyncio.gather(*list(self._writers.values()), return_exceptions=True)

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
