"""The edge's admin listener on the proxy core (``edge/admin.py``) and the core's
``PendingResponse`` hook it answers ``/health`` with, over real loopback sockets: the
paths, statuses and bodies of the hand-parsed server it replaced, a pending answer
cancelled when its client leaves, and a failing one answered 500 without harm to the next."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from prometheus_client import Counter

from zeitwork.edge.admin import EdgeAdmin, accepts_connections
from zeitwork.observability import new_registry
from zeitwork.observability.metrics import CONTENT_TYPE
from zeitwork.proxy.server import Proxy, ProxyConfig, reuse_port_socket
from zeitwork.proxy.types import (
    ClientInfo,
    Headers,
    LocalResponse,
    NullRouter,
    PendingResponse,
    RequestHead,
)


@dataclass
class FakeBalancer:
    """``lb_reachable``: answers ``up`` once ``gate`` is open; records cancellations."""

    up: bool = True
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    calls: int = 0
    cancelled: int = 0
    fail: bool = False

    def __post_init__(self) -> None:
        self.gate.set()

    async def __call__(self) -> bool:
        self.calls += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail:
            raise RuntimeError("probe broke")
        return self.up


@dataclass
class Admin:
    port: int
    balancer: FakeBalancer
    proxy: Proxy


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    registry = new_registry()
    Counter("edge_test_total", "a counter the admin shows", registry=registry).inc()
    balancer = FakeBalancer()
    proxy = Proxy(
        router=NullRouter(),
        policy=EdgeAdmin(registry=registry, lb_reachable=balancer),
        config=ProxyConfig(idle_timeout=10.0, header_timeout=5.0),
    )
    sock = reuse_port_socket("127.0.0.1", 0)
    await proxy.serve(sock)
    yield Admin(sock.getsockname()[1], balancer, proxy)
    await proxy.drain(0.5)


async def _exchange(port: int, raw: bytes, answers: int = 1) -> list[tuple[int, bytes, bytes]]:
    """Send ``raw`` (one or more requests), read ``answers`` responses: (status, head, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        out = []
        for _ in range(answers):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            is_head = raw.startswith(b"HEAD")
            body = b"" if is_head else await reader.readexactly(length)
            out.append((int(head.split()[1]), head.lower(), body))
        return out
    finally:
        writer.close()
        await writer.wait_closed()


def _get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode()


async def test_health_follows_the_load_balancer(admin: Admin) -> None:
    [(status, head, body)] = await _exchange(admin.port, _get("/health"))
    assert (status, body) == (200, b'{"status":"ok"}')
    assert b"content-type: application/json" in head
    admin.balancer.up = False
    [(status, head, body)] = await _exchange(admin.port, _get("/health"))
    assert status == 503
    assert body == b'{"status":"degraded","detail":"load balancer unreachable"}'


async def test_metrics_and_unknown_paths(admin: Admin) -> None:
    [(status, head, body)] = await _exchange(admin.port, _get("/metrics"))
    assert status == 200 and b"edge_test_total 1.0" in body
    assert b"content-type: " + CONTENT_TYPE.lower().encode() in head
    for path in ("/nope", "/health?verbose=1", "/metricsx"):
        [(status, head, body)] = await _exchange(admin.port, _get(path))
        assert (status, body) == (404, b'{"status":404}'), path
        assert b"content-type: application/json" in head
    [(status, head, body)] = await _exchange(admin.port, _get("/health", "HEAD"))
    assert status == 200 and body == b""


async def test_each_answer_closes_the_connection_as_before(admin: Admin) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(_get("/health"))
    answer = await asyncio.wait_for(reader.read(), 10)  # to the end: the admin closes
    writer.close()
    await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b'{"status":"ok"}')


class Pipelined:
    """A policy keeping connections open: ``/slow`` waits for ``gate``, the rest at once."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.gate = gate

    def on_request(
        self, head: RequestHead, client: ClientInfo
    ) -> LocalResponse | PendingResponse | None:
        if head.path == "/slow":
            return PendingResponse(self._slow)
        return LocalResponse(200, [], head.path.encode())

    async def _slow(self) -> LocalResponse:
        await self.gate.wait()
        return LocalResponse(200, [], b"/slow")

    def on_response(
        self, head: RequestHead, client: ClientInfo, status: int, headers: Headers
    ) -> None:
        return None


async def test_a_pending_answer_keeps_pipelined_requests_in_order() -> None:
    gate = asyncio.Event()
    proxy = Proxy(router=NullRouter(), policy=Pipelined(gate))
    sock = reuse_port_socket("127.0.0.1", 0)
    await proxy.serve(sock)
    try:
        reading = asyncio.create_task(
            _exchange(
                sock.getsockname()[1], _get("/slow") + _get("/next") + _get("/slow"), answers=3
            )
        )
        await asyncio.sleep(0.2)
        assert not reading.done()  # the first answer waits, and the others behind it
        gate.set()
        answers = await reading
        assert [a[2] for a in answers] == [b"/slow", b"/next", b"/slow"]
    finally:
        await proxy.drain(0.5)


async def test_a_client_that_resets_cancels_its_pending_answer(admin: Admin) -> None:
    admin.balancer.gate.clear()
    _, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    writer.write(_get("/health"))
    await writer.drain()
    await _until(lambda: admin.balancer.calls == 1)  # the probe is under way
    # a reset (a half-close only asks for the close after the answer, as for a backend's)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await _until(lambda: admin.balancer.cancelled == 1)
    admin.balancer.gate.set()
    [(status, _, _)] = await _exchange(admin.port, _get("/health"))
    assert status == 200


async def test_a_failing_pending_answer_is_a_500_and_the_listener_goes_on(admin: Admin) -> None:
    admin.balancer.fail = True
    [(status, head, _)] = await _exchange(admin.port, _get("/health"))
    assert status == 500 and b"content-type: application/problem+json" in head
    admin.balancer.fail = False
    [(status, _, body)] = await _exchange(admin.port, _get("/health"))
    assert (status, body) == (200, b'{"status":"ok"}')


async def test_accepts_connections_probes_a_real_port() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        assert await accepts_connections("127.0.0.1", port)
    finally:
        listener.close()
    assert not await accepts_connections("127.0.0.1", port)


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.02)
