"""Firecracker's logger and metrics FIFOs, read into the agent's logs and metrics.

Firecracker opens the FIFOs for writing when ``PUT /logger`` and ``PUT /metrics`` arrive, so a
reader must hold them open first. The reader opens each FIFO read-write (it then never sees
end-of-file while firecracker restarts its writes) and non-blocking, and forwards lines:
VMM log lines become ``firecracker.vmm_log`` events, metrics lines (JSON objects flushed
every minute and on ``FlushMetrics``) are kept as the latest snapshot per instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class FifoReader:
    """Reads one FIFO line by line in a named task until ``close``."""

    def __init__(self, *, path: Path, on_line: Callable[[str], None], name: str) -> None:
        self._path = path
        self._on_line = on_line
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._fd: int | None = None

    async def open(self) -> None:
        self._fd = os.open(self._path, os.O_RDWR | os.O_NONBLOCK)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=256 * 1024)
        protocol = asyncio.StreamReaderProtocol(reader)
        pipe = os.fdopen(self._fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: protocol, pipe)
        self._task = asyncio.create_task(self._pump(reader, transport), name=self._name)

    async def _pump(self, reader: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # a line longer than the limit: skip it
                    continue
                if not line:
                    return
                text = line.decode(errors="replace").rstrip("\n")
                if text:
                    self._on_line(text)
        finally:
            transport.close()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class Telemetry:
    """Per-instance FIFO readers and the latest VMM metrics snapshot."""

    def __init__(self) -> None:
        self._readers: dict[str, list[FifoReader]] = {}
        self._metrics: dict[str, dict[str, Any]] = {}

    def latest_metrics(self, instance_id: str) -> dict[str, Any] | None:
        return self._metrics.get(instance_id)

    async def attach(self, instance_id: str, *, log_fifo: Path, metrics_fifo: Path) -> None:
        await self.detach(instance_id)

        def on_log(line: str) -> None:
            log.info("firecracker.vmm_log", instance_id=instance_id, line=line)

        def on_metrics(line: str) -> None:
            try:
                snapshot = json.loads(line)
            except ValueError:
                log.warning("firecracker.bad_metrics_line", instance_id=instance_id)
                return
            if isinstance(snapshot, dict):
                self._metrics[instance_id] = snapshot

        readers = [
            FifoReader(path=log_fifo, on_line=on_log, name=f"fc-log-{instance_id}"),
            FifoReader(path=metrics_fifo, on_line=on_metrics, name=f"fc-metrics-{instance_id}"),
        ]
        self._readers[instance_id] = []
        for reader in readers:
            await reader.open()
            self._readers[instance_id].append(reader)

    async def detach(self, instance_id: str) -> None:
        for reader in self._readers.pop(instance_id, []):
            await reader.close()
        self._metrics.pop(instance_id, None)

    async def close(self) -> None:
        for instance_id in list(self._readers):
            await self.detach(instance_id)
