"""WebSockets across deploys, through the real load balancer with the real ``websockets``
client and server: when the backend of an open WebSocket leaves the route table (a release
replaced it) or the balancer itself drains (SIGTERM), the connection is not cut: messages
flow both ways until the drain timeout, then both ends get a close frame with code 1001
(Going Away), so the client reconnects, to the new release. Drains without tunnels are not
slowed."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.integration.lb.conftest import MakeLB, MakeOrigin, eventually, http
from zeitwork.lb.main import LoadBalancer
from zeitwork.proxy.tunnel import CLOSE_WAIT
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend, RouteTable

QUIET = HealthCheck(type="tcp", interval=60, unhealthy_threshold=3)
TUNNEL_DRAIN = 2.0  # the balancer's tunnel_drain_timeout in these tests
SWEEP = 0.25  # the engine notices a drained backend at its next deadline sweep


class WsBackend:
    """A WebSocket server: echoes each message with its name; ``push`` makes it send three
    messages of its own; records the close code each connection ended with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closes: list[int | None] = []
        self.server: Server | None = None
        self.address = ""

    async def start(self) -> WsBackend:
        self.server = await serve(self._handler, "127.0.0.1", 0, ping_interval=None)
        port = self.server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    async def _handler(self, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                if message == "push":
                    for i in range(3):
                        await ws.send(f"{self.name} push {i}")
                else:
                    await ws.send(f"{self.name}: {message}")
        except ConnectionClosed:
            pass
        finally:
            self.closes.append(ws.close_code)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def ws_backends() -> AsyncIterator[list[WsBackend]]:
    started: list[WsBackend] = []
    yield started
    for backend in started:
        await backend.stop()


async def ws_backend(started: list[WsBackend], name: str) -> WsBackend:
    backend = await WsBackend(name).start()
    started.append(backend)
    return backend


def publish(lb: LoadBalancer, *addresses: str, host: str = "app.test") -> None:
    version = (lb.router.version or 0) + 1
    route = Route(
        host=host,
        release_id=uuid.uuid4(),
        health_check=QUIET,
        backends=[RouteBackend(address=a) for a in addresses],
    )
    lb.router.apply(RouteTable(version=version, routes=[route]))


async def balancer(make_lb: MakeLB) -> LoadBalancer:
    lb = await make_lb(eject_failures=100)
    # the tunnel drain timeout is a ProxyConfig setting (25 s by default): short here
    lb.proxy.config = dataclasses.replace(lb.proxy.config, tunnel_drain_timeout=TUNNEL_DRAIN)
    return lb


def client(lb: LoadBalancer) -> connect:
    # Host: app.test (the route), the socket to the balancer
    return connect(
        "ws://app.test/ws", host="127.0.0.1", port=lb.port, ping_interval=None, open_timeout=10
    )


async def talk_for(ws: ClientConnection, name: str, seconds: float) -> int:
    """Messages both ways (echoes, and pushes from the backend) for ``seconds``."""
    started = time.monotonic()
    rounds = 0
    while time.monotonic() - started < seconds:
        await ws.send(f"m{rounds}")
        assert await ws.recv() == f"{name}: m{rounds}"
        await ws.send("push")
        assert [await ws.recv() for _ in range(3)] == [f"{name} push {i}" for i in range(3)]
        rounds += 1
        await asyncio.sleep(0.05)
    return rounds


async def closed_code(ws: ClientConnection, within: float) -> int | None:
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


async def test_a_websocket_outlives_its_backends_drain_then_gets_going_away(
    make_lb: MakeLB, ws_backends: list[WsBackend]
) -> None:
    old, new = await ws_backend(ws_backends, "old"), await ws_backend(ws_backends, "new")
    lb = await balancer(make_lb)
    publish(lb, old.address)
    async with client(lb) as ws:
        assert await talk_for(ws, "old", 0.1) >= 1
        drained_at = time.monotonic()
        publish(lb, new.address)  # a release replaces the instance: it drains
        assert old.address not in lb.backends.backends  # drained and forgotten
        # the tunnel stays up: data flows both ways for most of the drain timeout
        assert await talk_for(ws, "old", TUNNEL_DRAIN - 0.5) >= 3
        code = await closed_code(ws, within=TUNNEL_DRAIN + SWEEP + CLOSE_WAIT + 5)
        lasted = time.monotonic() - drained_at
    assert code == 1001
    assert TUNNEL_DRAIN - 0.1 <= lasted < TUNNEL_DRAIN + SWEEP + CLOSE_WAIT + 2
    # the backend got a close frame too (masked, as from a client), not a reset
    await eventually(lambda: old.closes == [1001])
    # the client reconnects: to the new release
    async with client(lb) as ws:
        assert await talk_for(ws, "new", 0.1) >= 1


async def test_the_balancers_drain_keeps_a_websocket_to_its_grace_then_closes_it_cleanly(
    make_lb: MakeLB, ws_backends: list[WsBackend]
) -> None:
    backend = await ws_backend(ws_backends, "app")
    lb = await balancer(make_lb)
    publish(lb, backend.address)
    grace = 1.5
    async with client(lb) as ws:
        await talk_for(ws, "app", 0.1)
        started = time.monotonic()
        drain = asyncio.create_task(lb.proxy.drain(grace))
        assert await talk_for(ws, "app", grace - 0.5) >= 2  # served on during the grace
        code = await closed_code(ws, within=grace + CLOSE_WAIT + 5)
        lasted = time.monotonic() - started
        cut = await drain
    assert code == 1001
    assert grace - 0.1 <= lasted < grace + CLOSE_WAIT + 1
    assert cut == 0  # closed cleanly, not cut
    await eventually(lambda: backend.closes == [1001])


async def test_a_drain_without_tunnels_is_not_slowed(
    make_lb: MakeLB, make_origin: MakeOrigin
) -> None:
    origin = await make_origin("app")
    lb = await balancer(make_lb)
    publish(lb, origin.address)
    for _ in range(3):
        assert (await http(lb.port, path="/who", host="app.test")).body == b"app"
    started = time.monotonic()
    cut = await lb.proxy.drain(10.0)
    assert cut == 0
    assert time.monotonic() - started < 1.0
