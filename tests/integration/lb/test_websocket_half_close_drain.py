"""A WebSocket tunnel that one side has half-closed (a FIN without a close frame; the other
side still open) when its backend drains: the balancer sends the 1001 close frame only
towards the side that can still take bytes, and its deadline sweep goes on, so the other
WebSockets of the drain get theirs too. (Writing the frame after the FIN raised
``RuntimeError: Cannot call write() after write_eof()`` out of the sweep, which then never
ran again in that worker: no timeouts, no drains. Seen first in
tests/e2e/test_websocket_release.py.) Real balancer, real sockets, the real ``websockets``
client for the WebSocket that must still get its 1001."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.integration.lb.conftest import MakeLB
from tests.integration.lb.test_websocket_drain import (
    SWEEP,
    TUNNEL_DRAIN,
    WsBackend,
    balancer,
    client,
    closed_code,
    publish,
    talk_for,
    ws_backend,
)
from zeitwork.proxy.tunnel import CLOSE_WAIT
from zeitwork.proxy.websocket import GOING_AWAY

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
ACCEPT = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
CLOSE_1001 = GOING_AWAY.to_bytes(2, "big")


class RawBackend:
    """Answers one upgrade with 101, optionally half-closes at once, records what it reads
    until the balancer's EOF."""

    def __init__(self, *, half_close: bool) -> None:
        self.half_close = half_close
        self.received = b""
        self.done = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.address = ""
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> RawBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ACCEPT)
        if self.half_close:
            writer.write_eof()
        while chunk := await reader.read(65536):
            self.received += chunk
        self.done.set()

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def raw_backends() -> AsyncIterator[list[RawBackend]]:
    started: list[RawBackend] = []
    yield started
    for backend in started:
        await backend.stop()


@pytest.fixture
async def ws_started() -> AsyncIterator[list[WsBackend]]:
    started: list[WsBackend] = []
    yield started
    for backend in started:
        await backend.stop()


@pytest.mark.parametrize("side", ["client", "backend"])
async def test_a_half_closed_websocket_drains_without_stopping_the_sweep(
    make_lb: MakeLB,
    ws_started: list[WsBackend],
    raw_backends: list[RawBackend],
    side: str,
) -> None:
    raw = await RawBackend(half_close=side == "backend").start()
    raw_backends.append(raw)
    old, new = await ws_backend(ws_started, "old"), await ws_backend(ws_started, "new")
    lb = await balancer(make_lb)
    publish(lb, raw.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    try:
        writer.write(UPGRADE)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        if side == "client":
            writer.write_eof()  # a FIN, no close frame; the backend keeps its side open
            await asyncio.wait_for(raw.done.wait(), 5)  # the FIN reached the backend
        else:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the backend's FIN
        publish(lb, old.address)  # the half-closed tunnel's backend drains
        async with client(lb) as ws:
            await talk_for(ws, "old", 0.1)
            await asyncio.sleep(TUNNEL_DRAIN + SWEEP * 2)  # the half-closed one goes away
            publish(lb, new.address)  # now old drains: its WebSocket still gets 1001
            code = await closed_code(ws, within=TUNNEL_DRAIN + SWEEP + CLOSE_WAIT + 3)
        assert code == 1001
        if side == "client":  # the client can still read: it got the close frame
            rest = await asyncio.wait_for(reader.read(), 5)
            assert rest[:1] == b"\x88" and rest[2:4] == CLOSE_1001, rest
            assert raw.received == b""  # nothing after the FIN it had been sent
        else:  # the backend can still read: it got the (masked) close frame
            await asyncio.wait_for(raw.done.wait(), 5)
            assert raw.received[:1] == b"\x88" and raw.received[1] == 0x82, raw.received
    finally:
        writer.close()
