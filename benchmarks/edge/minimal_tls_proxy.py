"""A reference point for benchmarks/edge.sh, not a product: the least a uvloop TLS proxy can
do per connection. It terminates TLS with Python's ssl (the edge's TLS stack), waits for one
request head, sends a fixed GET over a pooled keep-alive upstream connection, relays the
upstream's answer (its end found by Content-Length, the only framing nginx uses here) and
closes, or with ``keep-alive`` waits for the client's next request. No parsing beyond that,
no headers, limits, timeouts or policy. Measured beside the edge it shows how much of the gap
to HAProxy is Python's TLS layer and event loop, and how much is the edge's own work.

Two TLS layers: uvloop's (``create_server(ssl=...)``), and with ``bio`` the way the edge's
own layer works (``zeitwork.edge.tls_transport``): the connection's protocol drives an
``ssl`` object over two memory BIOs, and a response goes out with the close_notify in one
write.

usage: minimal_tls_proxy.py PORT CERT KEY UPSTREAM_PORT [keep-alive] [bio]
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys

import uvloop

PORT, CERT, KEY, UPSTREAM = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
KEEP_ALIVE = "keep-alive" in sys.argv[5:]
BIO = "bio" in sys.argv[5:]
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
        if self.left < 0:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                client.send(data, close=False)
                return
            start = self.head.lower().find(b"content-length:")
            length = int(self.head[start + 15 : self.head.find(b"\r\n", start)])
            self.left = length - (len(self.head) - end - 4)
            self.head = b""
        else:
            self.left -= len(data)
        last = self.left <= 0
        client.send(data, close=last and not KEEP_ALIVE)
        if last:
            self.client, self.left = None, -1
            idle.append(self)


class Client(asyncio.Protocol):
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, *, close: bool) -> None:
        assert self.transport is not None
        self.transport.write(data)
        if close:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.request(data)

    def request(self, data: bytes) -> None:
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


class BioClient(Client):
    """TLS over memory BIOs in the protocol itself (the edge's way)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ready = False

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.incoming.write(data)
        if not self.ready:
            try:
                self.tls.do_handshake()
                self.ready = True
            except ssl.SSLWantReadError:
                self.transport.write(self.outgoing.read())
                return
            except ssl.SSLError:
                self.transport.abort()
                return
        while self.incoming.pending or self.tls.pending():
            try:
                chunk = self.tls.read(16384)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLError:
                self.transport.abort()
                return
            if not chunk:
                break
            self.request(chunk)

    def send(self, data: bytes, *, close: bool) -> None:
        assert self.transport is not None
        self.tls.write(data)  # TLS 1.3 tickets, made at the handshake's end, go with it
        if close:
            with contextlib.suppress(ssl.SSLError):
                self.tls.unwrap()  # close_notify, the peer's not waited for
        self.transport.write(self.outgoing.read())
        if close:
            self.transport.close()


async def main() -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(CERT, KEY)
    loop = asyncio.get_running_loop()
    if BIO:
        server = await loop.create_server(lambda: BioClient(ctx), "127.0.0.1", PORT, backlog=1024)
    else:
        server = await loop.create_server(Client, "127.0.0.1", PORT, ssl=ctx, backlog=1024)
    async with server:
        await server.serve_forever()


uvloop.run(main())
