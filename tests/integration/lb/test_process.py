"""The real ``zeitwork load-balancer`` command in a subprocess: traffic, memory, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable

import pytest

from tests.integration.lb.conftest import (
    LBProcess,
    MakeOrigin,
    connection,
    eventually,
    http,
    read_response,
)

StartLB = Callable[..., LBProcess]

pytestmark = pytest.mark.slow


async def test_command_balances_real_traffic_and_serves_admin(
    make_origin: MakeOrigin, lb_process: StartLB
) -> None:
    a, b = await make_origin("a"), await make_origin("b")
    lb = await asyncio.to_thread(lb_process, LB_BACKENDS=f"{a.address},{b.address}")
    names = Counter([(await http(lb.port, path="/who")).body for _ in range(10)])
    assert names == {b"a": 5, b"b": 5}
    health = await http(lb.admin_port, path="/health", host="127.0.0.1")
    assert health.json()["backends"] == {"total": 2, "available": 2}
    metrics = (await http(lb.admin_port, path="/metrics", host="127.0.0.1")).body.decode()
    assert (
        f'zeitwork_lb_requests_total{{backend="{a.address}",route="default",status="200"}} 5.0'
        in metrics
    )
    assert "zeitwork_lb_upstream_latency_seconds_bucket" in metrics
    assert "zeitwork_lb_open_connections" in metrics
    # the admin paths are not shadowing the apps: on the data port they reach the backend
    assert (await http(lb.port, path="/metrics")).body in (b"a", b"b")


async def test_sigterm_drains_in_flight_requests_then_exits(
    make_origin: MakeOrigin, lb_process: StartLB
) -> None:
    a = await make_origin("a")
    lb = await asyncio.to_thread(lb_process, LB_BACKENDS=a.address, LB_DRAIN_TIMEOUT="5")
    slow = asyncio.create_task(http(lb.port, path="/slow/2.0"))
    while a.hits < 1:
        await asyncio.sleep(0.02)
    lb.proc.send_signal(signal.SIGTERM)

    async def refused() -> bool:
        try:
            await http(lb.port, path="/who")
        except OSError:
            return True
        return False

    await eventually(refused, timeout=5)  # no longer accepting
    assert not slow.done()  # ... while the in-flight request is still being served
    r = await slow
    assert r.status == 200 and r.body == b"a slow"
    assert await asyncio.to_thread(lb.proc.wait, 10) == 0
    assert '"lb.stopped"' in lb.log.read_text()


async def test_large_bodies_stream_in_constant_memory(
    make_origin: MakeOrigin, lb_process: StartLB
) -> None:
    a = await make_origin("a")
    lb = await asyncio.to_thread(lb_process, LB_BACKENDS=a.address)
    await http(lb.port, path="/who")
    base = lb.rss_kib()
    total = 256 * 1024 * 1024
    block = os.urandom(1 << 20)
    peak = base
    async with connection(lb.port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % total)

        async def upload() -> None:
            for _ in range(total // len(block)):
                writer.write(block)
                await writer.drain()

        async def download() -> int:
            nonlocal peak
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            got = 0
            while got < total:
                data = await reader.read(1 << 20)
                assert data
                got += len(data)
                if got % (32 << 20) < len(data):
                    peak = max(peak, lb.rss_kib())
            return got

        _, got = await asyncio.gather(upload(), download())
    assert got == total
    # 256 MiB went through; the proxy's memory grew by far less than that
    assert peak - base < 48 * 1024, (base, peak)


async def test_flood_of_bad_requests_keeps_memory_flat_and_serves_normal_traffic(
    make_origin: MakeOrigin, lb_process: StartLB
) -> None:
    a = await make_origin("a")
    lb = await asyncio.to_thread(
        lb_process, LB_BACKENDS=a.address, LB_HEADER_TIMEOUT="1", LB_MAX_BODY="10000"
    )
    bad = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]

    async def one(raw: bytes) -> bytes:
        try:
            async with connection(lb.port) as (reader, writer):
                writer.write(raw)
                return await asyncio.wait_for(reader.read(64), 5)
        except ConnectionError:
            return b"reset"

    async def wave(n: int) -> Counter[bytes]:
        sem = asyncio.Semaphore(64)

        async def guarded(raw: bytes) -> bytes:
            async with sem:
                return (await one(raw))[:12]

        results = await asyncio.gather(*(guarded(bad[i % len(bad)]) for i in range(n)))
        return Counter(results)

    await wave(600)  # warm up allocator pools
    before = lb.rss_kib()
    for _ in range(3):
        counts = await wave(1200)
        assert sum(v for k, v in counts.items() if k.startswith(b"HTTP/1.1 4")) >= 1150, counts
        r = await http(lb.port, path="/who")
        assert r.status == 200 and r.body == b"a"
    after = lb.rss_kib()
    assert after - before < 8 * 1024, (before, after)
    # a half-open slowloris crowd does not block others
    slow = [await asyncio.open_connection("127.0.0.1", lb.port) for _ in range(200)]
    for _, w in slow:
        w.write(b"GET / HTTP/1.1\r\n")
    async with connection(lb.port) as (reader, writer):
        writer.write(b"GET /who HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 3)).body == b"a"
    for _, w in slow:
        w.transport.abort()


async def test_several_workers_share_the_port(make_origin: MakeOrigin, lb_process: StartLB) -> None:
    a, b = await make_origin("a"), await make_origin("b")
    lb = await asyncio.to_thread(lb_process, LB_BACKENDS=f"{a.address},{b.address}", LB_WORKERS="2")
    for _ in range(40):
        assert (await http(lb.port, path="/who")).status == 200
    assert (
        len(
            __import__("tests.integration.lb.conftest", fromlist=["children"]).children(lb.proc.pid)
        )
        == 2
    )

    # worker 0's admin listener reports all workers' requests (published every second)
    async def total() -> float:
        text = (await http(lb.admin_port, path="/metrics", host="x")).body.decode()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("zeitwork_lb_requests_total{") and 'status="200"' in line
        )

    for _ in range(100):
        if await total() == 40:
            break
        await asyncio.sleep(0.1)
    assert await total() == 40
    assert lb.stop() == 0


async def test_workers_end_with_a_supervisor_killed_outright(
    make_origin: MakeOrigin, lb_process: StartLB
) -> None:
    """SIGKILL on the supervisor: the kernel sends its workers SIGTERM (PR_SET_PDEATHSIG), so
    they drain and exit instead of serving on unsupervised."""
    from pathlib import Path

    from tests.integration.lb.conftest import children

    a = await make_origin("a")
    lb = await asyncio.to_thread(lb_process, LB_BACKENDS=a.address, LB_WORKERS="2")
    workers = children(lb.proc.pid)
    assert len(workers) == 2
    lb.proc.kill()
    await asyncio.to_thread(lb.proc.wait, 5)

    def alive() -> list[int]:
        out = []
        for pid in workers:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
            except OSError:
                continue
            if state != "Z":
                out.append(pid)
        return out

    for _ in range(150):
        if not alive():
            break
        await asyncio.sleep(0.1)
    assert not alive(), f"workers {alive()} outlived their supervisor"
