"""Per-route limits through the real load balancer, on real sockets: each route's response
idle timeout (a stall before the head is a 504, one mid-body a cut connection; another route
with a longer one is served), its tunnel idle time (an idle WebSocket gets close code 1001,
a busy one on the same route stays, as does an idle one on a route without the limit) and its
tunnel count (one upgrade too many is answered 503 with Retry-After, never a reset; a closed
tunnel gives its place back)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.lb.conftest import MakeLB, MakeOrigin, connection, eventually, http
from zeitwork.lb.main import LoadBalancer
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend, RouteTable

QUIET = HealthCheck(type="tcp", interval=60, unhealthy_threshold=3)


def publish(lb: LoadBalancer, address: str, *routes: tuple[str, dict[str, Any]]) -> None:
    version = (lb.router.version or 0) + 1
    table = RouteTable(
        version=version,
        routes=[
            Route(
                host=host,
                release_id=uuid.uuid4(),
                health_check=QUIET,
                backends=[RouteBackend(address=address)],
                **limits,
            )
            for host, limits in routes
        ],
    )
    lb.router.apply(table)


class Stalling:
    """An origin whose ``GET /stall/S`` answers a head and half its body, waits S seconds,
    then sends the rest."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> Stalling:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seconds = float(head.split(b" ", 2)[1].rsplit(b"/", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nfirst")
            await writer.drain()
            await asyncio.sleep(seconds)
            writer.write(b"-half")
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def stalling() -> AsyncIterator[Stalling]:
    origin = await Stalling().start()
    yield origin
    await origin.stop()


async def stalled_body(port: int, host: str, seconds: float) -> bytes:
    """What arrives of ``/stall/seconds`` before the balancer closes or the body ends."""
    async with connection(port) as (reader, writer):
        writer.write(f"GET /stall/{seconds} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        body = b""
        async with asyncio.timeout(seconds + 10):
            while len(body) < 10:
                piece = await reader.read(10 - len(body))
                if not piece:
                    break
                body += piece
        return body


@pytest.mark.slow
async def test_each_route_has_its_own_response_idle_timeout(
    make_origin: MakeOrigin, make_lb: MakeLB, stalling: Stalling
) -> None:
    o = await make_origin("o")
    # the balancer's own: 1.5 s; "tight" cuts sooner, "patient" waits longer (the deadline
    # sweep runs every 0.25 s: a cut comes up to that late, later on a loaded machine)
    lb = await make_lb(first_byte_timeout=1.5, stream_idle_timeout=1.5, eject_failures=100)
    routes = [
        ("tight.test", {"response_idle_timeout": 0.5}),
        ("patient.test", {"response_idle_timeout": 10.0}),
        ("plain.test", {}),
    ]
    publish(lb, o.address, *routes)

    async def timed(host: str) -> tuple[int, float, bytes]:
        started = time.monotonic()
        r = await http(lb.port, "GET", "/slow/3.5", host=host)
        return r.status, time.monotonic() - started, r.body

    with capture_logs() as logs:
        tight, patient, plain = await asyncio.gather(
            timed("tight.test"), timed("patient.test"), timed("plain.test")
        )
    assert tight[0] == 504 and tight[1] < 1.4, tight  # before the head: a 504, at ~0.5 s
    assert plain[0] == 504 and 1.4 < plain[1] < 3.4, plain  # the balancer's own 1.5 s
    assert patient[0] == 200 and patient[2] == b"o slow", patient  # not cut at 1.5 s
    stalls = [e for e in logs if e["event"] == "proxy.exchange_stalled"]
    assert sorted((e["host"], e["stage"], e["timeout"]) for e in stalls) == [
        ("plain.test", "first_byte", 1.5),
        ("tight.test", "first_byte", 0.5),
    ]

    # a stall mid-body: cut on the tight route (the client sees a short body and the
    # close), waited out on the patient one
    publish(lb, stalling.address, *routes)
    cut, whole = await asyncio.gather(
        stalled_body(lb.port, "tight.test", 2.5), stalled_body(lb.port, "patient.test", 2.5)
    )
    assert cut == b"first"
    assert whole == b"first-half"


class Echo:
    """A WebSocket echo server recording each connection's close code."""

    def __init__(self) -> None:
        self.closes: list[int | None] = []
        self.server: Server | None = None
        self.address = ""

    async def start(self) -> Echo:
        self.server = await serve(self._handler, "127.0.0.1", 0, ping_interval=None)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _handler(self, ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.closes.append(ws.close_code)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    server = await Echo().start()
    yield server
    await server.stop()


def ws(lb: LoadBalancer, host: str) -> connect:
    return connect(
        f"ws://{host}/ws", host="127.0.0.1", port=lb.port, ping_interval=None, open_timeout=10
    )


async def round_trip(client: ClientConnection, text: str) -> None:
    await client.send(text)
    assert await asyncio.wait_for(client.recv(), 5) == text


async def test_a_routes_tunnel_count_is_answered_503_past_its_limit(
    make_lb: MakeLB, echo: Echo
) -> None:
    lb = await make_lb(eject_failures=100)
    publish(lb, echo.address, ("two.test", {"max_tunnels": 2}), ("free.test", {}))
    async with ws(lb, "two.test") as first, ws(lb, "two.test") as second:
        await round_trip(first, "a")
        await round_trip(second, "b")
        with capture_logs() as logs, pytest.raises(InvalidStatus) as refused:
            async with ws(lb, "two.test"):
                pass
        response = refused.value.response
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        assert b"tunnel" in response.body
        assert [e["host"] for e in logs if e["event"] == "proxy.tunnel_refused"] == ["two.test"]
        # another route has no limit; both tunnels still work
        async with ws(lb, "free.test") as third:
            await round_trip(third, "c")
        await round_trip(first, "a2")
        await round_trip(second, "b2")
    # closed tunnels give their places back
    pool = lb.router.resolve("two.test", "/")
    assert pool is not None
    await eventually(lambda: pool.tunnels == 0)
    async with ws(lb, "two.test") as again, ws(lb, "two.test") as twice:
        await round_trip(again, "d")
        await round_trip(twice, "e")


@pytest.mark.slow
async def test_an_idle_tunnel_is_closed_after_its_routes_time(make_lb: MakeLB, echo: Echo) -> None:
    lb = await make_lb(eject_failures=100)  # the balancer's own tunnel idle time: an hour
    publish(lb, echo.address, ("brief.test", {"tunnel_idle_timeout": 1.5}), ("long.test", {}))
    async with (
        ws(lb, "brief.test") as idle,
        ws(lb, "brief.test") as busy,
        ws(lb, "long.test") as other,
    ):
        for client in (idle, busy, other):
            await round_trip(client, "hello")
        started = time.monotonic()
        with capture_logs() as logs:
            # the busy one talks every 0.3 s for 3 s: its idle time never runs out
            while time.monotonic() - started < 3.0:
                await round_trip(busy, "tick")
                await asyncio.sleep(0.3)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(idle.recv(), 1)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
        assert [e["timeout"] for e in logs if e["event"] == "proxy.tunnel_idle"] == [1.5]
        await round_trip(busy, "still")
        await round_trip(other, "still")  # idle as long on a route without the limit: open
    await eventually(lambda: 1001 in echo.closes)  # the backend got its close frame too
