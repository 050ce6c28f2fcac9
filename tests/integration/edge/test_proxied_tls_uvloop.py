"""The PROXY-then-TLS listener on uvloop's own loop, in-process, so that what it keeps alive
can be counted. (The edge runs on uvloop; pytest's loop is asyncio's, whose transports
differ exactly where these cases live: uvloop starts reading right after
``connection_made``, and switching a transport's protocol from a buffered one to the TLS
layer restarts its reading. An earlier version upgraded with ``loop.start_tls``, which lost
ClientHellos and kept dead connections until the handshake timeout on uvloop.)"""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

import uvloop

from zeitwork.edge.certificates.x509 import issue_leaf, self_signed_ca
from zeitwork.edge.engine import EdgeProxy, SinglePool
from zeitwork.edge.metrics import HandshakeCounter
from zeitwork.edge.proxied_tls import ProxiedTlsListener
from zeitwork.edge.tls import TlsTerminator
from zeitwork.proxy.backends import Backend, Pool
from zeitwork.proxy.headers import TrustedProxies, parse_networks
from zeitwork.proxy.server import ClientProtocol


async def _origin() -> tuple[asyncio.Server, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _get(port: int, ctx: ssl.SSLContext | None = None, prefix: bytes = b"") -> bytes:
    """One ``Connection: close`` GET, over TLS with ``ctx`` (after ``prefix`` in the clear)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        if prefix:
            raw.sendall(prefix)
        conn = raw if ctx is None else ctx.wrap_socket(raw, server_hostname="a.test")
        with conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            return data


def test_proxy_protocol_listener_on_uvloop_keeps_nothing_and_loses_no_byte() -> None:
    ca, ca_key = self_signed_ca("test CA")
    chain, key = issue_leaf(["a.test"], ca_cert_pem=ca, ca_key_pem=ca_key)
    client = ssl.create_default_context(cadata=ca)

    async def scenario(pool_threads: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        origin, origin_port = await _origin()
        tls = TlsTerminator()
        tls.install("a.test", chain, key)
        pool = Pool("lb")
        pool.set_backends([Backend(f"127.0.0.1:{origin_port}")])
        proxy = EdgeProxy(
            handshakes=HandshakeCounter(),
            router=SinglePool(pool),
            trusted=TrustedProxies(parse_networks("192.0.2.0/24")),  # not us: no header
        )
        listener = ProxiedTlsListener(
            proxy=proxy, ssl_context=tls.server_context, handshake_timeout=30, header_timeout=5
        )
        server = await loop.create_server(listener.protocol_factory(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        # a peer that sends its ClientHello at once: the bytes uvloop reads before TLS takes
        # over reach the handshake
        for _ in range(20):
            answer = await loop.run_in_executor(pool_threads, _get, port, client)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:100]

        # peers that connect and close at once: nothing is kept until the handshake timeout
        def connect_and_close() -> None:
            for _ in range(50):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()

        await loop.run_in_executor(pool_threads, connect_and_close)
        await asyncio.sleep(0.5)
        gc.collect()
        assert not [o for o in gc.get_objects() if type(o).__name__ == "TlsTransport"]
        assert not proxy.connections
        assert proxy.handshakes.started == 70 and proxy.handshakes.completed == 20
        server.close()
        origin.close()
        await proxy.drain(0.1)
        for backend in pool.backends:
            backend.close_idle()

    with ThreadPoolExecutor(max_workers=1) as pool_threads:
        uvloop.run(scenario(pool_threads))


def test_plain_listener_on_uvloop_frees_every_connection() -> None:
    """Plain HTTP with Connection: close, as in production (uvloop, the engine's own protocol
    factory): no client protocol outlives its connection. The compiled build once kept every
    one of them (run by the compiled-wheel suite too)."""

    async def scenario(pool_threads: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        origin, origin_port = await _origin()
        pool = Pool("lb")
        pool.set_backends([Backend(f"127.0.0.1:{origin_port}")])
        proxy = EdgeProxy(handshakes=HandshakeCounter(), router=SinglePool(pool))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await proxy.serve(sock)
        port = sock.getsockname()[1]
        try:
            for _ in range(50):
                answer = await loop.run_in_executor(pool_threads, _get, port)
                assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok"), answer[:99]
            await asyncio.sleep(0.2)
            gc.collect()
            open_ones = len(proxy.connections)
            kept = sum(isinstance(o, ClientProtocol) for o in gc.get_objects())
        finally:
            server.close()
            origin.close()
            await proxy.drain(0.1)
            for backend in pool.backends:
                backend.close_idle()
        assert open_ones == 0 and kept == 0, (open_ones, kept)

    with ThreadPoolExecutor(max_workers=1) as pool_threads:
        uvloop.run(scenario(pool_threads))
