"""The HTTPS listener when ``EDGE_PROXY_PROTOCOL`` is on.

A TCP (layer 4) load balancer in front of the edge cannot add ``X-Forwarded-For`` to
encrypted traffic; it names the client in a PROXY v1/v2 header sent before the TLS
ClientHello instead. The event loop's TLS server starts the handshake with the first byte, so
with the option on the HTTPS socket is served as plain TCP first: from a trusted proxy a
buffered protocol reads the header, from any other peer nothing; then ``loop.start_tls``
upgrades the same transport, the bytes read past the header (the start of the ClientHello)
are handed to the TLS layer before anything else, and the edge's usual client protocol takes
over with the client's address. With the option off the HTTPS listener is the loop's own TLS
server.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, cast

from zeitwork.edge.client_ip import ProxyProtocolError, parse_proxy_header
from zeitwork.edge.engine import EdgeProxy
from zeitwork.observability import get_logger
from zeitwork.proxy.server import ClientProtocol, peer_address

log = get_logger("zeitwork.edge.proxied_tls")

_HEADER_MAX = 536  # the PROXY v2 limit for TCP with TLVs we accept
_READ_SIZE = 4096  # a header and the ClientHello that follows usually come in one read


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
    """Plain TCP until TLS: reads a PROXY header from a trusted peer, nothing from others.

    Bytes that arrive after the header (the ClientHello, often in the same segment) are kept
    and handed to the TLS layer first, in order, when it takes the transport over
    (``ProxiedTlsListener._feed``). That also covers uvloop, which starts reading right after
    ``connection_made`` returns, so that a pause made there (for a peer that sends no
    header) does not hold: whatever it reads before TLS takes over is kept the same way."""

    def __init__(self, listener: ProxiedTlsListener) -> None:
        self._listener = listener
        self._buf = bytearray(_READ_SIZE)
        self._data = b""  # read so far, while the header is incomplete
        self._early: list[bytes] | None = None  # set once TLS is starting: bytes for it
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._held = ""  # the address whose place under the connection caps this holds
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._peer = peer_address(transport)
        listener = self._listener
        limiter = listener.proxy.limiter
        if limiter is not None:
            # a place under the caps from TCP accept until TLS is up (or failed): then the
            # client protocol takes one for the client the header named
            if not limiter.acquire(self._peer):
                self._transport.abort()
                return
            self._held = self._peer
        listener.proxy.handshakes.start()
        if not listener.proxy.trusted.trusts(self._peer):
            self._upgrade("", b"")  # no header expected from anyone else
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(listener.header_timeout, self._expire)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buf)

    def buffer_updated(self, nbytes: int) -> None:
        chunk = bytes(self._buf[:nbytes])
        if self._early is not None:  # TLS is starting: these bytes are its
            self._early.append(chunk)
            return
        data = self._data + chunk
        try:
            header = parse_proxy_header(data)
        except ProxyProtocolError as exc:
            self._reject(str(exc))
            return
        if header is None:
            if len(data) > _HEADER_MAX:
                self._reject("no end of the PROXY header")
                return
            self._data = data
            return
        if header.length > _HEADER_MAX:
            self._reject("PROXY header too long")
            return
        self._data = b""
        self._upgrade(header.source or self._peer, data[header.length :])

    @property
    def peer(self) -> str:
        return self._peer

    def take_early(self) -> list[bytes]:
        """The bytes read past the header, for the TLS layer (once)."""
        early = self._early or []
        self._early = []
        return early

    def eof_received(self) -> bool | None:
        return None  # closed before TLS: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.release_place()  # closed before TLS took the connection over

    def release_place(self) -> None:
        if self._held:
            limiter = self._listener.proxy.limiter
            assert limiter is not None
            limiter.release(self._held)
            self._held = ""

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

    def _upgrade(self, source: str, rest: bytes) -> None:
        self._cancel_timer()
        transport = self._transport
        assert transport is not None
        self._early = [rest] if rest else []
        transport.pause_reading()  # until TLS owns the transport (see the class docstring)
        self._listener.start_tls(transport, source, self)


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

    def start_tls(self, transport: asyncio.Transport, source: str, reader: _HeaderReader) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._start_tls(transport, source, reader))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # runs right after the task's first step, in which start_tls puts its TLS protocol on
        # the transport (paused, before that protocol's connection_made and resume_reading,
        # which it schedules in turn)
        loop.call_soon(self._feed, transport, reader)

    @staticmethod
    def _feed(transport: asyncio.Transport, reader: _HeaderReader) -> None:
        """Hand the TLS layer the bytes the header reader took past the header, first."""
        early = reader.take_early()
        if not early or transport.is_closing():
            return
        tls_side = transport.get_protocol()
        # uvloop's TLS protocol is buffered by duck typing (not an asyncio.BufferedProtocol)
        get_buffer = getattr(tls_side, "get_buffer", None)
        buffer_updated = getattr(tls_side, "buffer_updated", None)
        if tls_side is reader or get_buffer is None or buffer_updated is None:
            log.warning("edge.tls_takeover_missed", peer=reader.peer)
            transport.abort()
            return
        for chunk in early:
            view = memoryview(chunk)
            while view:
                buf = memoryview(get_buffer(len(view))).cast("B")
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                buffer_updated(n)
                view = view[n:]

    async def _start_tls(
        self, transport: asyncio.Transport, source: str, reader: _HeaderReader
    ) -> None:
        if transport.is_closing():
            # gone before TLS could start (a peer that connects and closes at once). start_tls
            # would still arm its handshake timer on the dead connection, holding it until the
            # timeout: a cheap way to pile up memory
            return
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
        except (OSError, ssl.SSLError, TimeoutError, EOFError, RuntimeError) as exc:
            # counted as started and never completed; the transport is closed
            log.debug("edge.handshake_failed", error=str(exc) or type(exc).__name__)
            transport.abort()
            return
        finally:
            # TLS owns the connection now (the reader sees no connection_lost): give the
            # place back here; the client protocol takes its own in connection_made
            reader.release_place()
        if tls is None or tls.is_closing():  # the connection went away during the handshake
            transport.abort()
            return
        client = self.proxy.proxied_tls_client(source)
        handover.attach(client, tls)
