"""Node agent start-up figures with the oci driver and a cached image (needs root):
``python benchmarks/agent_start.py [--starts 50] [--burst 20]`` (``make bench-agent``).

Runs a real agent process (standalone, its own bridge, subnet and cgroup parent) and the
test image (busybox httpd), then measures:

1. assignment -> first HTTP 200, one instance at a time (``--starts``, all left running):
   p50 / p99 / max. "Assignment" is the agent API call that hands the agent the instance;
   the clock stops at the first ``200`` from the instance's address.
2. the agent's RSS with those instances running;
3. ``--burst`` instances assigned at once: time until every one of them answers 200.

Everything is removed at the end. Goals (issue 3): p50 <= 150 ms, p99 <= 400 ms, 20 at once
serving within 2 s, agent RSS <= 80 MiB with 50 running.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.images import build_image
from tests.integration.agent.harness import AgentHost, instance_body, preload


def _http_ok(address: str, port: int) -> bool:
    connection = http.client.HTTPConnection(address, port, timeout=0.5)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


async def _first_200(client: object, instance_id: str, deadline: float) -> None:
    address = None
    while address is None:
        view = (await client.get(f"/instances/{instance_id}")).json()  # type: ignore[attr-defined]
        address = view.get("ip_address")
        if view["state"] == "failed":
            raise RuntimeError(f"instance failed: {view['reason']}")
        if time.perf_counter() > deadline:
            raise TimeoutError("no address")
        if address is None:
            await asyncio.sleep(0.001)
    while not await asyncio.to_thread(_http_ok, address, 8080):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{address} never answered")
        await asyncio.sleep(0.001)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _print_phases(log_text: str) -> None:
    """Median of the agent's own per-phase start timings (log event instance.start_timings)."""
    phases: dict[str, list[float]] = {}
    for line in log_text.splitlines():
        if "instance.start_timings" not in line:
            continue
        for name, value in re.findall(r"(\w+_ms)=([0-9.]+)", line):
            phases.setdefault(name, []).append(float(value))
    if phases:
        parts = ", ".join(f"{k[:-3]} {statistics.median(v):.1f} ms" for k, v in phases.items())
        print(f"  agent-side phases (median over {len(next(iter(phases.values())))}): {parts}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def main(starts: int, burst: int) -> None:
    if os.geteuid() != 0:
        raise SystemExit("agent_start: needs root (network namespaces, runc)")
    with tempfile.TemporaryDirectory(prefix="zw-bench-agent-") as tmp:
        root = Path(tmp)
        image = build_image(root / "app.tar")
        host = AgentHost(
            root=root / "host",
            extra_env={"LOG_LEVEL": "info", "ZEITWORK_RESERVED_MEMORY_MIB": "0"},
        )
        await preload(host.data_dir, image)
        host.start()
        try:
            await host.wait_ready()
            vcpu = max(0.01, round(1.9 / max(starts, burst), 3))
            body = instance_body(image, resources={"vcpu": vcpu, "memory": 32})
            latencies: list[float] = []
            async with host.client() as client:
                for _ in range(starts):
                    began = time.perf_counter()
                    response = await client.post("/instances", json=body)
                    response.raise_for_status()
                    await _first_200(client, response.json()["id"], began + 30)
                    latencies.append((time.perf_counter() - began) * 1000)
                assert host.process is not None
                rss = _rss_mib(host.process.pid)
                print(f"sequential starts: {starts} (each left running), vcpu={vcpu}")
                print(
                    f"  assignment -> first 200: p50 {statistics.median(latencies):.1f} ms, "
                    f"p99 {_pct(latencies, 0.99):.1f} ms, max {max(latencies):.1f} ms, "
                    f"min {min(latencies):.1f} ms"
                )
                print(f"  agent RSS with {starts} running: {rss:.1f} MiB")

                listed = (await client.get("/instances")).json()
                for view in listed:
                    await client.delete(f"/instances/{view['id']}")
                while (await client.get("/instances")).json():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)

                began = time.perf_counter()
                responses = await asyncio.gather(
                    *(client.post("/instances", json=body) for _ in range(burst))
                )
                ids = [r.json()["id"] for r in responses]
                await asyncio.gather(*(_first_200(client, i, began + 60) for i in ids))
                took = time.perf_counter() - began
                print(f"burst: {burst} assigned at once, all serving after {took * 1000:.0f} ms")
                for instance_id in ids:
                    await client.delete(f"/instances/{instance_id}")
                while (await client.get("/instances")).json():  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            _print_phases(host.log_path.read_text())
        finally:
            await host.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=50)
    parser.add_argument("--burst", type=int, default=20)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.starts, arguments.burst))
