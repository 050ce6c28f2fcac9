from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from zeitwork.runtime.firecracker import MetricsCollector, Telemetry
from zeitwork.runtime.firecracker.telemetry import add_increments


def test_increments_are_summed_and_junk_ignored() -> None:
    totals: dict[str, float] = {}
    add_increments(totals, {"net": {"rx_bytes_count": 100, "tx_bytes_count": 5}})
    add_increments(totals, {"net": {"rx_bytes_count": 50}, "block": {"read_bytes": True}})
    add_increments(totals, {"net": "nonsense", "vmm": {"panic_count": -1}})
    assert totals == {"zeitwork_microvm_net_rx_bytes": 150, "zeitwork_microvm_net_tx_bytes": 5}


def test_collector_exports_per_instance_series() -> None:
    telemetry = Telemetry()
    telemetry.record("vm-a", json.dumps({"net": {"rx_bytes_count": 7}}))
    telemetry.record("vm-a", json.dumps({"net": {"rx_bytes_count": 3}}))
    telemetry.record("vm-b", "not json")
    registry = CollectorRegistry()
    registry.register(MetricsCollector(telemetry))
    text = generate_latest(registry).decode()
    assert 'zeitwork_microvm_net_rx_bytes_total{instance_id="vm-a"} 10.0' in text
    assert "vm-b" not in text
    assert telemetry.latest_metrics("vm-a") == {"net": {"rx_bytes_count": 3}}


async def test_fifo_readers_follow_real_fifos(tmp_path: Path) -> None:
    logs, metrics = tmp_path / "logs.fifo", tmp_path / "metrics.fifo"
    os.mkfifo(logs)
    os.mkfifo(metrics)
    telemetry = Telemetry()
    await telemetry.attach("vm", log_fifo=logs, metrics_fifo=metrics)
    try:
        # A writer like firecracker: non-blocking open succeeds because a reader holds it.
        fd = os.open(metrics, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b'{"block": {"write_bytes": 4096}}\n{"block": {"write_bytes": 1}}\n')
        os.close(fd)
        fd = os.open(logs, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"a vmm log line\n")
        os.close(fd)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while telemetry.totals().get("vm", {}).get("zeitwork_microvm_block_write_bytes") != 4097:
            assert loop.time() < deadline, telemetry.totals()
            await asyncio.sleep(0.01)
    finally:
        await telemetry.detach("vm")
    assert telemetry.totals() == {}
    # With no reader left, a non-blocking writer is refused (what firecracker would see).
    try:
        os.open(metrics, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        assert exc.errno == 6  # ENXIO
    else:
        raise AssertionError("the FIFO still had a reader after detach")
