"""Real-socket harness for the edge: an upstream app, an in-process edge, a raw HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from zeitwork.edge.main import Edge
from zeitwork.edge.settings import EdgeSettings
from zeitwork.settings import parse_settings


@dataclass
class Upstream:
    """A tiny HTTP/1.1 keep-alive app: echoes the request line and a few headers."""

    port: int = 0
    seen: list[dict[bytes, bytes]] = field(default_factory=list)
    server: asyncio.Server | None = None
    # /gated/N sends the first half of /big/N, then waits for this before the rest
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                headers: dict[bytes, bytes] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.partition(b":")
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get(b"content-length", b"0"))
                uploaded = await reader.readexactly(length) if length else b""
                self.seen.append(headers)
                target = line.split()[1]
                if target.startswith((b"/big/", b"/gated/")):  # N bytes, in 64 KiB writes
                    gated = target.startswith(b"/gated/")
                    size = int(target.rsplit(b"/", 1)[1])
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
                    block = bytes(range(256)) * 256
                    for start in range(0, size, len(block)):
                        if gated and start >= size // 2:
                            await self.gate.wait()
                        writer.write(block[: min(len(block), size - start)])
                        await writer.drain()
                    continue
                if target == b"/upload":  # answers the body's length and SHA-256
                    digest = b"%d %s" % (
                        len(uploaded),
                        hashlib.sha256(uploaded).hexdigest().encode(),
                    )
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(digest), digest)
                    )
                    await writer.drain()
                    continue
                if target == b"/ws" and headers.get(b"upgrade", b"").lower() == b"websocket":
                    writer.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                        b"connection: Upgrade\r\n\r\n"
                    )
                    while data := await reader.read(65536):  # echo, both ways through the edge
                        writer.write(data.upper())
                        await writer.drain()
                    return
                extra = b""
                if target.startswith(b"/app-headers"):
                    extra = b"X-Frame-Options: DENY\r\n"  # mixed case: the core lowers it
                body = b"ok " + target
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n%scontent-length: %d\r\n\r\n%s"
                    % (extra, len(body), body)
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # server closed at teardown: end the handler quietly
        finally:
            writer.close()


@dataclass
class Response:
    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class Conn:
    """One client connection (plain or TLS) sending raw HTTP/1.1 requests."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        tls: ssl.SSLContext | None = None,
        sni: str | None = None,
        local: str | None = None,
    ) -> Conn:
        """``local``: the client's own address (any of 127.0.0.0/8 works on loopback)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=tls,
            server_hostname=sni if tls else None,
            local_addr=(local, 0) if local else None,
        )
        return cls(reader, writer)

    @property
    def ssl_object(self) -> Any:
        return self.writer.get_extra_info("ssl_object")

    async def request(
        self,
        target: str = "/",
        *,
        host: str = "app.test",
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> Response:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        return await self.read_response(method)

    async def read_response(self, method: str = "GET") -> Response:
        async with asyncio.timeout(10):
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("closed")
            status = int(status_line.split()[1])
            out: dict[bytes, list[bytes]] = {}
            while True:
                h = await self.reader.readline()
                if h in (b"\r\n", b""):
                    break
                k, _, v = h.partition(b":")
                out.setdefault(k.strip().lower(), []).append(v.strip())
            length = int(out.get(b"content-length", [b"0"])[0])
            body = await self.reader.readexactly(length) if length and method != "HEAD" else b""
        return Response(status, out, body)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def client_context(ca: Path | str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def wait_for(probe: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await probe():
            await asyncio.sleep(0.05)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    await up.start()
    yield up
    await up.stop()


EdgeFactory = Callable[..., Awaitable[Edge]]


@pytest.fixture
async def make_edge(upstream: Upstream, tmp_path: Path) -> AsyncIterator[EdgeFactory]:
    started: list[Edge] = []

    async def factory(**env: Any) -> Edge:
        values: dict[str, Any] = {
            "PORT": 0,
            "EDGE_HTTPS_PORT": 0,
            "EDGE_ADMIN_PORT": 0,
            "HOST": "127.0.0.1",
            "LOAD_BALANCER_URL": f"http://127.0.0.1:{upstream.port}",
            "ZEITWORK_DATA_DIR": str(tmp_path / "data"),
            "EDGE_DRAIN_TIMEOUT": 1,
        }
        values.update(env)
        settings = parse_settings(EdgeSettings, **{k: v for k, v in values.items()})
        edge = Edge(settings)
        await edge.start()
        started.append(edge)
        return edge

    yield factory
    for edge in started:
        await edge.stop()


async def admin_get(edge: Edge, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.ports["admin"])
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body
