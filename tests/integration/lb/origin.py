"""A small real HTTP/1.1 origin server for the load balancer tests (asyncio streams).

Paths: /health (200, or 503 when ``healthy`` is False), /ready... (``ready_status``; each
request's path and Host recorded in ``checks``), /headers (JSON of request headers),
/echo (streams the body back), /download/N (N bytes), /chunked, /slow/S, /status/N,
/garbage, /ws (WebSocket handshake, then echo), /close, /nolength; anything else answers
the origin's name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Origin:
    def __init__(self, name: str) -> None:
        self.name = name
        self.healthy = True
        self.hits = 0
        self.health_hits = 0
        self.ready_status = 200
        self.checks: list[tuple[str, str]] = []  # (target, Host) of /ready... requests
        self.connections = 0
        self.app_connections = 0
        self.after_half_close: list[bytes] = []  # /ws-half-close: read after its own EOF
        self.fail_status: int | None = None
        self.server: asyncio.Server | None = None
        self.port = 0
        self.last_headers: dict[str, str] = {}
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def open_connections(self) -> int:
        return len(self._writers)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> Origin:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def refuse_new(self) -> None:
        """Stop listening (new connections are refused); open ones keep being served, as by
        an app that got SIGTERM and finishes what it has."""
        if self.server is not None:
            self.server.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self._writers):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        seen_app = [False]
        try:
            while await self._one(reader, writer, seen_app):
                pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _one(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen_app: list[bool]
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        path = target.split("?", 1)[0]
        if path.startswith("/ready"):
            self.checks.append((target, headers.get("host", "")))
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % self.ready_status)
            await writer.drain()
            return True
        if path == "/health":
            self.health_hits += 1
            status = 200 if self.healthy else 503
            body = b"ok" if self.healthy else b"sick"
            writer.write(
                b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body)
            )
            await writer.drain()
            return True
        self.hits += 1
        if not seen_app[0]:
            seen_app[0] = True
            self.app_connections += 1
        self.last_headers = headers
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        length = int(headers.get("content-length", "0") or 0)
        if self.fail_status is not None:
            await self._read_body(reader, chunked, length)
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % self.fail_status)
            await writer.drain()
            return True
        if path == "/echo":
            await self._echo(reader, writer, chunked, length)
            return True
        body = await self._read_body(reader, chunked, length)
        if path == "/drop":  # read the request, then vanish without an answer
            writer.transport.abort()
            return False
        if path == "/ws-half-close":
            # a tunnel whose backend says goodbye and half-closes, then still listens
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n\r\nbye"
            )
            await writer.drain()
            writer.write_eof()
            while data := await reader.read(65536):
                self.after_half_close.append(data)
            return False
        if path == "/ws":
            key = headers.get("sec-websocket-key", "").encode()
            accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept
            )
            while True:
                data = await reader.read(65536)
                if not data:
                    return False
                writer.write(data)
                await writer.drain()
        if path == "/headers":
            out = json.dumps({"headers": headers, "method": method, "target": target}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(out), out)
            )
        elif path.startswith("/download/"):
            total = int(path.rsplit("/", 1)[1])
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
            block = b"x" * 65536
            sent = 0
            while sent < total:
                piece = block[: min(len(block), total - sent)]
                writer.write(piece)
                sent += len(piece)
                await writer.drain()
        elif path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b"alpha-", b"beta-", b"gamma"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path.startswith("/slow/"):
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
            out = f"{self.name} slow".encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out))
        elif path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % code)
        elif path == "/garbage":
            writer.write(b"THIS IS NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            return False
        elif path == "/close":
            writer.write(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nbye\r\n"
            )
            await writer.drain()
            return False
        elif path == "/nolength":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil-close body")
            await writer.drain()
            return False
        else:
            out = self.name.encode()
            extra = (
                b"x-origin: %s\r\nconnection: keep-alive\r\n"
                b"keep-alive: timeout=5\r\nx-hop: secret\r\n" % out
            )
            if path == "/conn-listed":
                extra += b"connection: x-hop\r\n"
            if method == "HEAD":
                writer.write(b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n" % (extra, len(out)))
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n%s" % (extra, len(out), out)
                )
            del body
        await writer.drain()
        return headers.get("connection", "").lower() != "close"

    async def _read_body(self, reader: asyncio.StreamReader, chunked: bool, length: int) -> bytes:
        if chunked:
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return b"".join(parts)
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
        return await reader.readexactly(length) if length else b""

    async def _echo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunked: bool, length: int
    ) -> None:
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                data = await reader.readexactly(size)
                await reader.readexactly(2)
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % length)
        remaining = length
        while remaining:
            data = await reader.read(min(remaining, 262144))
            if not data:
                raise ConnectionError("short body")
            remaining -= len(data)
            writer.write(data)
            await writer.drain()
