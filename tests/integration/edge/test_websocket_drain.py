"""A wss:// WebSocket through the edge (its own TLS layer) while the edge drains: messages
flow both ways up to the drain timeout, then the client gets a close frame with code 1001
(Going Away) and the backend one too, rather than a cut connection. The real ``websockets``
client and server."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.integration.edge.conftest import EdgeFactory, client_context
from zeitwork.proxy.tunnel import CLOSE_WAIT

DRAIN = 1.5


async def test_a_wss_websocket_runs_to_the_edges_drain_timeout_then_gets_going_away(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    closes: list[int | None] = []

    async def echo(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(f"echo {message}")
        except ConnectionClosed:
            pass
        finally:
            closes.append(ws.close_code)

    async with serve(echo, "127.0.0.1", 0, ping_interval=None) as server:
        port = server.sockets[0].getsockname()[1]
        edge = await make_edge(
            EDGE_DOMAINS="app.test",
            LOAD_BALANCER_URL=f"http://127.0.0.1:{port}",
            EDGE_DRAIN_TIMEOUT=DRAIN,
        )
        ctx = client_context(tmp_path / "data" / "edge" / "ca" / "ca.crt")
        async with connect(
            "wss://app.test/ws",
            host="127.0.0.1",
            port=edge.ports["https"],
            ssl=ctx,
            server_hostname="app.test",
            ping_interval=None,
            open_timeout=10,
        ) as ws:
            await ws.send("before")
            assert await ws.recv() == "echo before"
            started = time.monotonic()
            stopping = asyncio.create_task(edge.stop())  # SIGTERM's path: drain, then stop
            sent = 0
            while time.monotonic() - started < DRAIN - 0.5:  # still served while draining
                await ws.send(f"m{sent}")
                assert await ws.recv() == f"echo m{sent}"
                sent += 1
                await asyncio.sleep(0.05)
            try:
                async with asyncio.timeout(DRAIN + CLOSE_WAIT + 5):
                    while True:
                        await ws.recv()
            except ConnectionClosed as exc:
                closed = exc
            lasted = time.monotonic() - started
            await stopping
        assert sent >= 3
        assert closed.rcvd is not None and closed.rcvd.code == 1001
        assert DRAIN - 0.1 <= lasted < DRAIN + CLOSE_WAIT + 1
        async with asyncio.timeout(5):
            while not closes:
                await asyncio.sleep(0.02)
        assert closes == [1001]
