"""The probes against real sockets on 127.0.0.1: tcp connect, http status ranges, Host
header, refused, timeout, garbage; and the monitor's loop end to end (ready, unhealthy,
liveness callback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from zeitwork.agent.health import HealthMonitor, probe
from zeitwork.core.states import HealthState
from zeitwork.wire.health import HealthCheck, InstanceHealth

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def answering(status: int, seen: list[bytes] | None = None) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(head)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return handle


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_tcp_connects() -> None:
    async with serving(answering(200)) as port:
        result = await probe(HealthCheck(type="tcp"), "127.0.0.1", port)
    assert result.ok and result.detail == f"connected to :{port}"
    assert result.latency_ms is not None and result.checked_at is not None


async def test_refused_names_the_port() -> None:
    port = free_port()
    for kind in ("tcp", "http"):
        result = await probe(HealthCheck(type=kind), "127.0.0.1", port)
        assert not result.ok
        assert result.detail == f"connection refused on :{port}"


@pytest.mark.parametrize(("status", "ok"), [(200, True), (302, True), (404, False), (500, False)])
async def test_http_status_range(status: int, ok: bool) -> None:
    seen: list[bytes] = []
    check = HealthCheck(type="http", path="/healthz")
    async with serving(answering(status, seen)) as port:
        result = await probe(check, "127.0.0.1", port)
    assert (result.ok, result.status_code) == (ok, status)
    assert result.detail == f"GET /healthz -> {status}"
    assert seen[0].startswith(b"GET /healthz HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in seen[0]


async def test_http_custom_range_and_host_header() -> None:
    seen: list[bytes] = []
    check = HealthCheck(
        type="http", host="app.example.com", expected_status_min=404, expected_status_max=404
    )
    async with serving(answering(404, seen)) as port:
        assert (await probe(check, "127.0.0.1", port)).ok
    assert b"Host: app.example.com\r\n" in seen[0]


async def test_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers
        writer.close()

    async with serving(silent) as port:
        result = await probe(HealthCheck(type="http", timeout=0.2), "127.0.0.1", port)
    assert not result.ok and result.detail == "timed out after 0.2 s"


@pytest.mark.parametrize(
    ("answer", "detail"),
    [
        (b"", "GET /: connection closed before a response"),
        (b"SSH-2.0-OpenSSH\r\n", "GET /: not an HTTP response"),
        (b"HTTP/1.1 999 Nope\r\n", "GET /: not an HTTP response"),
    ],
)
async def test_garbage(answer: bytes, detail: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async with serving(handle) as port:
        result = await probe(HealthCheck(type="http"), "127.0.0.1", port)
    assert not result.ok and result.detail == detail


async def test_none_needs_no_socket() -> None:
    result = await probe(HealthCheck(type="none"), "127.0.0.1", free_port())
    assert result.ok and result.detail == "running"


async def test_monitor_reports_changes_and_liveness() -> None:
    changes: list[tuple[uuid.UUID, InstanceHealth]] = []
    failed: list[tuple[uuid.UUID, str]] = []
    done = asyncio.Event()
    status = {"code": 200}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 {status['code']} X\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    def on_unhealthy(instance_id: uuid.UUID, reason: str) -> None:
        failed.append((instance_id, reason))
        done.set()

    monitor = HealthMonitor(
        on_change=lambda i, h: changes.append((i, h)), on_unhealthy=on_unhealthy
    )
    instance = uuid.uuid4()
    check = HealthCheck(type="http", path="/x", interval=0.1, unhealthy_threshold=2)
    async with serving(handle) as port:
        loop = asyncio.get_running_loop()
        monitor.watch(
            instance, check=check, default_port=port, address="127.0.0.1", started_at=loop.time()
        )
        deadline = loop.time() + 5
        while not changes and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert changes and changes[0][1].state == HealthState.HEALTHY
        health = monitor.health(instance)
        assert health is not None and health.state == HealthState.HEALTHY
        status["code"] = 500
        await asyncio.wait_for(done.wait(), 5)
    assert failed == [(instance, "health check failed 2 times: GET /x -> 500")]
    assert changes[-1][1].state == HealthState.UNHEALTHY
    monitor.forget(instance)
    assert monitor.health(instance) is None
    await monitor.close()
