"""The HTTPS listener when ``EDGE_PROXY_PROTOCOL`` is on.

A TCP (layer 4) load balancer in front of the edge cannot add ``X-Forwarded-For`` to
encrypted traffic; it names the client in a PROXY v1/v2 header sent before the TLS
ClientHello instead. The event loop's TLS server starts the handshake with the first byte, so
with the option on the HTTPS socket is served as plain TCP first: from a trusted proxy a
buffered protocol reads exactly the header (it hands the transport buffers no larger than
what is still missing of the header, so no byte of the ClientHello is taken), from any other
peer nothing; then ``loop.start_tls`` upgrades the same transport and the edge's usual client
protocol takes over with the client's address. With the option off the HTTPS listener is
the loop's own TLS server.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, cast

from zeitwork.edge.client_ip import PROXY_V2_SIGNATURE, ProxyProtocolError, parse_proxy_header
from zeitwork.edge.engine import EdgeProxy
from zeitwork.observability import get_logger
from zeitwork.proxy.server import ClientProtocol

log = get_logger("zeitwork.edge.proxied_tls")

_HEADER_MAX = 536  # the PROXY v2 limit for TCP with TLVs we accept
_V1_MAX = 107
_SHORTEST = 15  # "PROXY UNKNOWN\r\n"; a v2 header has at least 16 bytes


class _Handover:
    """The TLS layer's application protocol until the handshake is done: keeps what arrives
    before the edge's client protocol is attached, then steps aside (``set_protocol``)."""

    def __init__(self) -> None:
        self.target: ClientProtocol | None = None
        self.early: list[bytes] = []
        self.eof = False
        self.lost: tuple[Exception | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass  # start_tls does not call it; the target gets the TLS transport in ``attach``

    def data_received(self, data: bytes) -> None:
        if self.target is not None:
            self.target.data_received(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool | None:
        if self.target is not None:
            return self.target.eof_received()
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.target is not None:
            self.target.connection_lost(exc)
        else:
            self.lost = (exc,)

    def pause_writing(self) -> None:
        if self.target is not None:
            self.target.pause_writing()

    def resume_writing(self) -> None:
        if self.target is not None:
            self.target.resume_writing()

    def attach(self, target: ClientProtocol, transport: asyncio.Transport) -> None:
        self.target = target
        transport.set_protocol(cast(asyncio.BaseProtocol, target))
        target.connection_made(transport)
        for data in self.early:
            target.data_received(data)
        self.early = []
        if self.eof:
            target.eof_received()
        if self.lost is not None:
            target.connection_lost(self.lost[0])


class _HeaderReader(asyncio.BufferedProtocol):
    """Plain TCP until TLS: reads a PROXY header from a trusted peer, byte-exact."""

    def __init__(self, listener: ProxiedTlsListener) -> None:
        self._listener = listener
        self._buf = bytearray(_HEADER_MAX)
        self._have = 0
        self._want = _SHORTEST
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else ""
        if self._peer.startswith("::ffff:"):
            self._peer = self._peer[7:]
        listener = self._listener
        listener.proxy.handshakes.started += 1
        if not listener.proxy.trusted.trusts(self._peer):
            self._upgrade("")  # no header expected from anyone else
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(listener.header_timeout, self._expire)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buf)[self._have : self._want]

    def buffer_updated(self, nbytes: int) -> None:
        self._have += nbytes
        if self._have < self._want:
            return
        data = bytes(self._buf[: self._have])
        if data[:1] == PROXY_V2_SIGNATURE[:1]:
            if self._have < 16:
                self._want = 16
                return
            total = 16 + int.from_bytes(data[14:16], "big")
            if total > _HEADER_MAX:
                self._reject("PROXY v2 header too long")
                return
            if self._have < total:
                self._want = total
                return
        elif not data.endswith(b"\r\n"):
            if self._have >= _V1_MAX or not data.startswith(b"PROXY "):
                self._reject("no PROXY v1 header end")
                return
            self._want = self._have + 1  # a v1 line ends at CRLF: one byte at a time
            return
        try:
            header = parse_proxy_header(data)
        except ProxyProtocolError as exc:
            self._reject(str(exc))
            return
        if header is None or header.length != len(data):
            self._reject("incomplete PROXY header")
            return
        self._upgrade(header.source or self._peer)

    def eof_received(self) -> bool | None:
        return None  # closed before TLS: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()

    def _expire(self) -> None:
        self._timer = None
        self._reject("no PROXY header in time")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _reject(self, why: str) -> None:
        self._cancel_timer()
        log.info("edge.proxy_header_rejected", peer=self._peer, error=why)
        if self._transport is not None:
            self._transport.abort()

    def _upgrade(self, source: str) -> None:
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        transport.pause_reading()  # nothing more is read until TLS owns the transport
        self._listener.start_tls(transport, source)


class ProxiedTlsListener:
    """Serves HTTPS on ``sock``: PROXY header from trusted peers first, then TLS."""

    def __init__(
        self,
        *,
        proxy: EdgeProxy,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
        header_timeout: float,
    ) -> None:
        self.proxy = proxy
        self.header_timeout = header_timeout
        self._ssl = ssl_context
        self._handshake_timeout = handshake_timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def protocol_factory(self) -> Any:
        def factory() -> _HeaderReader:
            return _HeaderReader(self)

        return factory

    def start_tls(self, transport: asyncio.Transport, source: str) -> None:
        task = asyncio.get_running_loop().create_task(self._start_tls(transport, source))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_tls(self, transport: asyncio.Transport, source: str) -> None:
        loop = asyncio.get_running_loop()
        handover = _Handover()
        try:
            tls = await loop.start_tls(
                transport,
                cast(asyncio.BaseProtocol, handover),
                self._ssl,
                server_side=True,
                ssl_handshake_timeout=self._handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, EOFError) as exc:
            # counted as started and never completed; the transport is closed
            log.debug("edge.handshake_failed", error=str(exc) or type(exc).__name__)
            transport.abort()
            return
        if tls is None:  # the connection went away during the handshake
            transport.abort()
            return
        client = self.proxy.proxied_tls_client(source)
        handover.attach(client, tls)
