"""Firecracker's logger and metrics FIFOs, read into the agent's logs and metrics.

Firecracker opens the FIFOs for writing when ``PUT /logger`` and ``PUT /metrics`` arrive, so a
reader must hold them open first. The reader opens each FIFO read-write (it then never sees
end-of-file while firecracker restarts its writes) and non-blocking, and forwards lines:
VMM log lines become ``firecracker.vmm_log`` events, metrics lines (JSON objects flushed
every minute and on ``FlushMetrics``) are kept as the latest snapshot per instance, and the
counters in ``EXPORTED`` (Firecracker reports them as increments since the previous flush)
are summed per instance and exported by ``MetricsCollector`` to the agent's registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

# (group, field) in Firecracker's metrics JSON -> (metric name, help)
EXPORTED: dict[tuple[str, str], tuple[str, str]] = {
    ("net", "rx_bytes_count"): ("zeitwork_microvm_net_rx_bytes", "Bytes the guest received"),
    ("net", "tx_bytes_count"): ("zeitwork_microvm_net_tx_bytes", "Bytes the guest sent"),
    ("block", "read_bytes"): ("zeitwork_microvm_block_read_bytes", "Bytes read from drives"),
    ("block", "write_bytes"): ("zeitwork_microvm_block_write_bytes", "Bytes written to drives"),
    ("vcpu", "failures"): ("zeitwork_microvm_vcpu_failures", "vCPU failures"),
    ("vmm", "panic_count"): ("zeitwork_microvm_vmm_panics", "VMM panics"),
}


def add_increments(totals: dict[str, float], snapshot: dict[str, Any]) -> None:
    """Add one flush's increments of the exported counters to ``totals`` (pure)."""
    for (group, name), (metric, _help) in EXPORTED.items():
        section = snapshot.get(group)
        if isinstance(section, dict):
            value = section.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                totals[metric] = totals.get(metric, 0.0) + value


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
        self._totals: dict[str, dict[str, float]] = {}

    def totals(self) -> dict[str, dict[str, float]]:
        """Exported counters per instance id (summed increments)."""
        return {key: dict(value) for key, value in self._totals.items()}

    def record(self, instance_id: str, line: str) -> None:
        """Take one metrics line (what the metrics FIFO reader calls)."""
        try:
            snapshot = json.loads(line)
        except ValueError:
            log.warning("firecracker.bad_metrics_line", instance_id=instance_id)
            return
        if isinstance(snapshot, dict):
            self._metrics[instance_id] = snapshot
            add_increments(self._totals.setdefault(instance_id, {}), snapshot)

    def latest_metrics(self, instance_id: str) -> dict[str, Any] | None:
        return self._metrics.get(instance_id)

    async def attach(self, instance_id: str, *, log_fifo: Path, metrics_fifo: Path) -> None:
        await self.detach(instance_id)

        def on_log(line: str) -> None:
            log.info("firecracker.vmm_log", instance_id=instance_id, line=line)

        def on_metrics(line: str) -> None:
            self.record(instance_id, line)

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
        self._totals.pop(instance_id, None)

    async def close(self) -> None:
        for instance_id in list(self._readers):
            await self.detach(instance_id)


class MetricsCollector(Collector):
    """Exports the summed VMM counters, one series per instance; the agent registers it
    (``registry.register(MetricsCollector(driver.telemetry))``)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def collect(self) -> Iterator[CounterMetricFamily]:
        totals = self._telemetry.totals()
        for metric, help_text in EXPORTED.values():
            family = CounterMetricFamily(metric, help_text, labels=["instance_id"])
            for instance_id, values in sorted(totals.items()):
                if metric in values:
                    family.add_metric([instance_id], values[metric])
            yield family
