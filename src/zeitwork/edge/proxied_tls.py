"""The HTTPS listener when ``EDGE_PROXY_PROTOCOL`` is on.

A TCP (layer 4) load balancer in front of the edge cannot add ``X-Forwarded-For`` to
encrypted traffic; it names the client in a PROXY v1/v2 header sent before the TLS
ClientHello instead. With the option on, each accepted connection first gets a small
buffered protocol that reads the header (from trusted peers only; from any other peer none
is expected), then hands the connection to the edge's TLS layer (``tls_transport``) for the
client the header named, with the bytes read past the header (the start of the ClientHello)
first. From a peer that sends no header the hand-over happens in ``connection_made``, before
any byte is read.

Until the hand-over the connection holds a place under the total connection cap for the
socket peer (a trusted proxy counts toward ``EDGE_MAX_CONNECTIONS`` only); the TLS layer then
takes the place of the client the header named, or refuses it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast

from zeitwork.edge.client_ip import ProxyProtocolError, parse_proxy_header
from zeitwork.edge.engine import EdgeProxy
from zeitwork.edge.tls_transport import ServerNameSlot
from zeitwork.observability import get_logger
from zeitwork.proxy.server import peer_address

log = get_logger("zeitwork.edge.proxied_tls")

_HEADER_MAX = 536  # the PROXY v2 limit for TCP with TLVs we accept
_READ_SIZE = 4096  # a header and the ClientHello that follows usually come in one read


class _HeaderReader(asyncio.BufferedProtocol):
    """Plain TCP until TLS: reads a PROXY header from a trusted peer, nothing from others."""

    def __init__(self, listener: ProxiedTlsListener) -> None:
        self._listener = listener
        self._buf = bytearray(_READ_SIZE)
        self._data = b""  # read so far, while the header is incomplete
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._held = ""  # the address whose place under the connection caps this holds
        self._timer: asyncio.TimerHandle | None = None
        self._handed_over = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._peer = peer_address(transport)
        listener = self._listener
        if not listener.proxy.trusted.trusts(self._peer):
            self._hand_over(self._peer, b"")  # no header expected from anyone else
            return
        limiter = listener.proxy.limiter
        if limiter is not None:
            if not limiter.acquire(self._peer):
                self._transport.abort()
                return
            self._held = self._peer
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(listener.header_timeout, self._expire)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buf)

    def buffer_updated(self, nbytes: int) -> None:
        if self._handed_over:
            return
        data = self._data + bytes(self._buf[:nbytes])
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
        self._hand_over(header.source or self._peer, data[header.length :])

    @property
    def peer(self) -> str:
        return self._peer

    def eof_received(self) -> bool | None:
        return None  # closed before TLS: let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._release_place()  # closed before the TLS layer took the connection over

    def _release_place(self) -> None:
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

    def _hand_over(self, client_ip: str, rest: bytes) -> None:
        """The TLS layer takes the connection (and its place under the caps) for
        ``client_ip``; ``rest`` (read past the header) is the start of the ClientHello."""
        self._cancel_timer()
        self._release_place()
        transport = self._transport
        assert transport is not None
        self._handed_over = True
        tls = self._listener.new_tls()
        transport.set_protocol(cast(asyncio.BaseProtocol, tls))  # a protocol by duck typing
        tls.attach(transport, client_ip)
        if rest and not transport.is_closing():
            tls.data_received(rest)


class ProxiedTlsListener:
    """Serves HTTPS on a socket: PROXY header from trusted peers first, then TLS."""

    def __init__(
        self,
        *,
        proxy: EdgeProxy,
        ssl_context: ssl.SSLContext,
        handshake_timeout: float,
        header_timeout: float,
        server_names: ServerNameSlot | None = None,
    ) -> None:
        self.proxy = proxy
        self.header_timeout = header_timeout
        self.new_tls = proxy.tls_protocol_factory(ssl_context, handshake_timeout, server_names)

    def protocol_factory(self) -> Callable[[], _HeaderReader]:
        def factory() -> _HeaderReader:
            return _HeaderReader(self)

        return factory
