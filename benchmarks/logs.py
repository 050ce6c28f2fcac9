"""Followed logs end to end (issue 20 item 7), as root: ``python benchmarks/logs.py``
(``make bench-logs``).

``zeitwork dev`` on this machine, one app with 3 instances (busybox ``sh`` loops) writing
about ``--rate`` lines/s in all. A follower reads ``GET /api/v1/projects/{app}/logs?follow=true``
(NDJSON, what ``zeitwork logs -f`` reads) while this script watches the instances' own log
files on the node (polled every 2 ms) and notes when each line appears there. Printed:

- lines/s delivered to the follower, lines written, lines lost;
- delay from a line appearing in the instance's log file to the follower receiving it:
  p50 / p99 / max (goal: p99 under 500 ms at 1,000 lines/s), and from the time the line
  carries (when the node's capture read it from the container's pipe) to the follower;
- the operator's RSS idle, with 1 follower, and with 20 followers attached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.dev_platform import Platform, dev_platform, until, zeitwork_processes
from tests.images import Entry, app_entries, build_image

from zeitwork.runtime.oci.logfiles import entry_of


def chatty_image(dest: Path, per_instance_rate: float) -> Path:
    """busybox writing ``line <n>`` lines, 10 at a time, ``per_instance_rate`` per second."""
    pause_us = int(10 / per_instance_rate * 1_000_000)
    script = (
        "i=0; while true; do for k in 0 1 2 3 4 5 6 7 8 9; do i=$((i+1)); "
        f'echo "line $i"; done; usleep {pause_us}; done'
    )
    entries = [*app_entries(), Entry("bin/usleep", symlink="busybox", mode=0o777)]
    return build_image(
        dest, layers=[entries], entrypoint=["/bin/sh", "-c", script], user="app"
    ).path


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _operator_pid(p: Platform) -> int:
    for pid in zeitwork_processes(p.data_dir):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"operator" in argv:
                return pid
    raise RuntimeError("no operator process found")


class FileWatch:
    """When each line appeared in an instance's console.log (polled every 2 ms)."""

    def __init__(self, path: Path, instance_id: str) -> None:
        self.path = path
        self.instance_id = instance_id
        self.seen: dict[str, float] = {}
        self._offset = path.stat().st_size  # only lines written from now on
        self._rest = b""

    def poll(self) -> None:
        with self.path.open("rb") as handle:
            size = handle.seek(0, 2)
            if size < self._offset:  # rotated (truncated): start again
                self._offset = 0
            handle.seek(self._offset)
            data = handle.read()
        self._offset += len(data)
        now = time.monotonic()
        data = self._rest + data
        *lines, self._rest = data.split(b"\n")
        for line in lines:  # a record: its text is what the follower gets
            self.seen.setdefault(entry_of(line.decode(errors="replace")).text, now)


async def _follow(
    client: httpx.AsyncClient,
    app: str,
    received: list[tuple[float, dict[str, Any]]] | None,
    stamped: list[float] | None = None,
) -> None:
    params = {"follow": "true", "format": "ndjson", "tail": "0"}
    async with client.stream("GET", f"/api/v1/projects/{app}/logs", params=params) as stream:
        async for line in stream.aiter_lines():
            if received is not None and line.strip():
                record = json.loads(line)
                received.append((time.monotonic(), record))
                if stamped is not None and "ts" in record:
                    written = datetime.fromisoformat(record["ts"]).timestamp()
                    stamped.append(time.time() - written)


async def run(rate: float, seconds: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="zw-bench-logs-"))
    image = chatty_image(root / "chatty.tar", rate / 3)
    async with dev_platform(root) as p:
        await until(
            lambda: _async(lambda: "Zeitwork is running" in p.output()),
            within=180,
            what="the platform",
            platform=p,
        )
        headers = {"Authorization": f"Bearer {p.token}"}
        async with httpx.AsyncClient(
            base_url=p.url("operator"), headers=headers, timeout=httpx.Timeout(30, read=None)
        ) as api:
            imported = await api.post(
                "/api/v1/images/import",
                params={"name": "chatty"},
                content=image.read_bytes(),
                headers={"Content-Type": "application/x-tar"},
            )
            imported.raise_for_status()
            app = f"logs-{uuid.uuid4().hex[:6]}"
            (await api.post("/api/v1/projects", json={"name": app, "slug": app})).raise_for_status()
            deployed = await api.post(
                f"/api/v1/projects/{app}/releases",
                json={
                    "image": imported.json()["id"],
                    "port": 8080,
                    "replicas": 3,
                    "resources": {"vcpu": 0.25, "memory": 64},
                    "health_check": {"type": "none"},
                    "strategy": {"min_healthy_time": 0},
                },
            )
            deployed.raise_for_status()

            async def serving() -> bool:
                status = (await api.get(f"/api/v1/projects/{app}/status")).json()
                running = [i for i in status["instances"] if i["state"] == "running"]
                return len(running) == 3

            await until(serving, within=120, what="3 instances running", platform=p)
            status = (await api.get(f"/api/v1/projects/{app}/status")).json()
            watches = []
            for instance in status["instances"]:
                [path] = list(p.data_dir.rglob(f"*{instance['id']}*/console.log")) or list(
                    p.data_dir.rglob(f"*{instance['id'].replace('-', '')}*/console.log")
                )
                watches.append(FileWatch(path, instance["id"]))
            pid = _operator_pid(p)
            rss_idle = _rss_kib(pid)

            received: list[tuple[float, dict[str, Any]]] = []
            stamped: list[float] = []
            follower = asyncio.create_task(_follow(api, app, received, stamped))
            began = time.monotonic()
            while time.monotonic() - began < seconds:
                for watch in watches:
                    watch.poll()
                await asyncio.sleep(0.002)
            rss_one = _rss_kib(pid)
            by_stamp = sorted(stamped)
            extra = [asyncio.create_task(_follow(api, app, None)) for _ in range(19)]
            await asyncio.sleep(5)
            for watch in watches:
                watch.poll()
            rss_twenty = _rss_kib(pid)
            for task in [follower, *extra]:
                task.cancel()
            for task in [follower, *extra]:
                with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                    await task

    by_instance = {w.instance_id: w for w in watches}
    delays = []
    got: set[tuple[str, str]] = set()
    for at, record in received:
        watch = by_instance.get(str(record.get("instance_id")))
        if watch is None or "line" not in record:
            continue
        got.add((watch.instance_id, record["line"]))
        written = watch.seen.get(record["line"])
        if written is not None and written >= began:
            delays.append(max(0.0, at - written))
    # lines written once the follower was attached (its first line from each instance) and
    # within the window: every one of them must arrive
    attached: dict[str, float] = {}
    for _at, record in received:
        watch = by_instance.get(str(record.get("instance_id")))
        if watch is not None and watch.instance_id not in attached:
            first = watch.seen.get(str(record.get("line")))
            if first is not None:
                attached[watch.instance_id] = first
    written_lines = {
        (w.instance_id, line)
        for w in watches
        for line, t in w.seen.items()
        if w.instance_id in attached and attached[w.instance_id] <= t <= began + seconds
    }
    delivered = [r for at, r in received if at <= began + seconds and "line" in r]
    delays.sort()
    return {
        "lines_written": len(written_lines),
        "lines_per_s": len(delivered) / seconds,
        "lost": len(written_lines - got),
        "p50_ms": 1000 * statistics.median(delays) if delays else float("nan"),
        "p99_ms": 1000 * delays[int(0.99 * (len(delays) - 1))] if delays else float("nan"),
        "max_ms": 1000 * delays[-1] if delays else float("nan"),
        "ts_p50_ms": 1000 * statistics.median(by_stamp) if by_stamp else float("nan"),
        "ts_p99_ms": 1000 * by_stamp[int(0.99 * (len(by_stamp) - 1))] if by_stamp else float("nan"),
        "rss_idle_mib": rss_idle / 1024,
        "rss_one_mib": rss_one / 1024,
        "rss_twenty_mib": rss_twenty / 1024,
    }


async def _async(check: Any) -> bool:
    return bool(check())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="lines/s in all")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    r = asyncio.run(run(args.rate, args.seconds))
    print(
        f"written {r['lines_written']} lines in {args.seconds:g} s (target {args.rate:g}/s); "
        f"follower got {r['lines_per_s']:.0f} lines/s; lost {r['lost']}"
    )
    print(
        f"delay file -> follower: p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
        f"max {r['max_ms']:.0f} ms"
    )
    print(
        f"delay line's write time -> follower: p50 {r['ts_p50_ms']:.0f} ms, "
        f"p99 {r['ts_p99_ms']:.0f} ms"
    )
    print(
        f"operator RSS: idle {r['rss_idle_mib']:.0f} MiB, 1 follower {r['rss_one_mib']:.0f} MiB, "
        f"20 followers {r['rss_twenty_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
