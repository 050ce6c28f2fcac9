"""A reference point for benchmarks/edge.sh, not a product: the least a uvloop TLS proxy can
do per connection. It terminates TLS with Python's ssl (the edge's TLS stack), waits for one
request head, sends a fixed GET over a pooled keep-alive upstream connection, relays the
upstream's answer (its end found by Content-Length, the only framing nginx uses here) and
closes, or with ``keep-alive`` waits for the client's next request. No parsing beyond that,
no headers, limits, timeouts or policy. Measured beside the edge it shows how much of the gap
to HAProxy is Python's TLS layer and event loop, and how much is the edge's own work.

usage: minimal_tls_proxy.py PORT CERT KEY UPSTREAM_PORT [keep-alive]
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import uvloop

PORT, CERT, KEY, UPSTREAM = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
KEEP_ALIVE = sys.argv[5:] == ["keep-alive"]
REQUEST = b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n"
idle: list[Upstream] = []


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.left = -1  # body bytes still to come; -1: the head is not complete yet
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or client.transport is None:
            return
        client.transport.write(data)
        if self.left < 0:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            start = self.head.lower().find(b"content-length:")
            length = int(self.head[start + 15 : self.head.find(b"\r\n", start)])
            self.left = length - (len(self.head) - end - 4)
            self.head = b""
        else:
            self.left -= len(data)
        if self.left > 0:
            return
        self.client, self.left = None, -1
        idle.append(self)
        if not KEEP_ALIVE:
            client.transport.close()


class Client(asyncio.Protocol):
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            if idle:
                self.forward(idle.pop())
            else:
                asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, upstream = await loop.create_connection(Upstream, "127.0.0.1", UPSTREAM)
        self.forward(upstream)

    def forward(self, upstream: Upstream) -> None:
        upstream.client = self
        assert upstream.transport is not None
        upstream.transport.write(REQUEST)


async def main() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(CERT, KEY)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Client, "127.0.0.1", PORT, ssl=ctx, backlog=1024)
    async with server:
        await server.serve_forever()


uvloop.run(main())
