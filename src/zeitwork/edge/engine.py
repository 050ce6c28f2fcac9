"""The edge's connection-level classes on top of the shared proxy core: the router (one pool,
the load balancer), the per-address and total connection caps, the client protocols (HTML
error pages by ``Accept``, TLS handshake accounting, the PROXY protocol from trusted peers)
and the engine that picks them.

Kept apart from ``main`` (the composition root) so that the release wheel compiles them with
mypyc together with the proxy core (``hatch_build.py``): a protocol class compiled as a
native subclass keeps the core's fast method calls, an interpreted subclass would not.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

from zeitwork.edge.client_ip import ProxyProtocolError, parse_proxy_header
from zeitwork.edge.http2 import EdgeH2, H2cSniffer
from zeitwork.edge.policy import html_page, wants_html
from zeitwork.edge.tls_transport import (
    HandshakeCounter,
    ServerNameSlot,
    TlsTransport,
    tls_factory,
)
from zeitwork.proxy.backends import Pool
from zeitwork.proxy.h2_rules import H2Limits
from zeitwork.proxy.headers import TrustedProxies
from zeitwork.proxy.server import ClientProtocol, Proxy, ProxyConfig
from zeitwork.proxy.types import (
    ClientInfo,
    ConnectionLimiter,
    Headers,
    Observer,
    RequestPolicy,
    Router,
)


class SinglePool:
    """Router: every request goes to the load balancer pool."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def resolve(self, host: str, path: str) -> Pool | None:
        return self.pool


class ConnectionCaps:
    """``ConnectionLimiter``: at most ``per_ip`` connections per address, ``total`` in all.

    Addresses in ``exempt`` (the trusted proxies: a load balancer in front multiplexes many
    clients over its own address) count toward the total only."""

    def __init__(self, *, per_ip: int, total: int, exempt: TrustedProxies | None = None) -> None:
        self._per_ip = per_ip
        self._total = total
        self._exempt = exempt
        self._counts: dict[str, int] = {}
        self.open = 0
        self.refused = 0

    def acquire(self, peer_ip: str) -> bool:
        count = self._counts.get(peer_ip, 0)
        per_ip = self._per_ip
        if count >= per_ip and self._exempt is not None and self._exempt.trusts(peer_ip):
            per_ip = count + 1
        if count >= per_ip or self.open >= self._total:
            self.refused += 1
            return False
        self._counts[peer_ip] = count + 1
        self.open += 1
        return True

    def release(self, peer_ip: str) -> None:
        count = self._counts.get(peer_ip, 0) - 1
        if count <= 0:
            self._counts.pop(peer_ip, None)
        else:
            self._counts[peer_ip] = count
        self.open -= 1


class _EdgeClient(ClientProtocol):
    """The core's client protocol; the core's own error answers (502, 503, 413, ..., and
    400/431/408 for input it could not parse) become a small HTML page when the request
    prefers HTML (``Accept``), as the edge's are (the core's error-renderer hook)."""

    def render_error(self, status: int, detail: str, headers: Headers) -> tuple[bytes, bytes]:
        if wants_html(headers):
            return b"text/html; charset=utf-8", html_page(status, detail)
        return super().render_error(status, detail, headers)


class _TlsCountingProtocol(_EdgeClient):
    """The HTTPS client protocol: counts completed handshakes (the TLS layer calls
    ``connection_made`` after the handshake) and corks the TLS layer on close, so that the
    last response and the close_notify leave in one TCP write."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handshakes: HandshakeCounter = self.proxy.handshakes  # type: ignore[attr-defined]
        handshakes.completed += 1
        super().connection_made(transport)

    def close(self) -> None:
        transport: object = self.transport
        if isinstance(transport, TlsTransport):
            transport.corked = True  # the core flushes, then closes the transport
        super().close()


_PROXY_HEADER_MAX = 536  # the PROXY v2 limit for TCP with TLVs we accept


class _ProxyProtocolClient(_EdgeClient):
    """Plain-HTTP connections from trusted proxies start with a PROXY v1/v2 header naming
    the real client; it replaces the socket peer for everything after (rate limits,
    forwarding headers). From any other peer no header is expected."""

    _pp_buffer: bytes | None = None
    _socket_peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._socket_peer = self.peer_ip
        if self.admitted and self.trusted_peer:
            self._pp_buffer = b""

    def data_received(self, data: bytes) -> None:
        buffered = self._pp_buffer
        if buffered is None:
            super().data_received(data)
            return
        data = buffered + data
        try:
            header = parse_proxy_header(data)
        except ProxyProtocolError:
            self._pp_buffer = None
            self.abort()
            return
        if header is None:
            if len(data) > _PROXY_HEADER_MAX:
                self._pp_buffer = None
                self.abort()
                return
            self._pp_buffer = data
            return
        self._pp_buffer = None
        source = header.source
        if source is not None:
            self.peer_ip = source
            self.peer_port = 0
            self.for_node = b""
            self.peer_b = self.client_b = source.encode()
            self.trusted_peer = self.proxy.trusted.trusts(source)
            self.info = ClientInfo(peer_ip=source, client_ip=source, tls=self.tls, sni=self.sni)
        rest = data[header.length :]
        if rest:
            super().data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._socket_peer:
            self.peer_ip = self._socket_peer  # the limiter counted the socket peer
        super().connection_lost(exc)


class EdgeProxy(Proxy):
    """The shared engine plus TLS handshake accounting (accepted vs completed) and the
    PROXY protocol on the plain-HTTP listener."""

    def __init__(
        self,
        *,
        handshakes: HandshakeCounter,
        proxy_protocol: bool = False,
        router: Router,
        config: ProxyConfig | None = None,
        policy: RequestPolicy | None = None,
        observer: Observer | None = None,
        limiter: ConnectionLimiter | None = None,
        trusted: TrustedProxies | None = None,
        http2: bool = False,
        h2c: bool = False,
        h2_limits: H2Limits | None = None,
    ) -> None:
        # explicit keywords, not **kwargs: mypyc passes a forwarded **kwargs positionally
        super().__init__(
            router=router,
            config=config,
            policy=policy,
            observer=observer,
            limiter=limiter,
            trusted=trusted,
        )
        self.handshakes = handshakes
        self.proxy_protocol = proxy_protocol
        self.http2 = http2  # ALPN h2 on TLS
        self.h2c = h2c  # HTTP/2 with prior knowledge on the plain listener
        self.h2_limits = h2_limits or H2Limits()

    def protocol_factory(self, *, tls: bool = False) -> Any:
        # Each class is named in its own call, not called through a variable: compiled, an
        # edge protocol class called as a Python object got two HTTP parsers (its __init__
        # ran twice), and the first, which refers back to the protocol, was never freed: every
        # plain-HTTP connection leaked (tests/unit/edge/test_engine.py).
        if not tls and self.proxy_protocol:

            def proxied() -> ClientProtocol:
                return _ProxyProtocolClient(self, tls=False)

            return proxied
        if not tls and self.h2c:

            def sniffing() -> ClientProtocol:
                return H2cSniffer(self, tls=False, limits=self.h2_limits)

            return sniffing
        if not tls:

            def plain() -> ClientProtocol:
                return _EdgeClient(self, tls=False)

            return plain

        def client() -> ClientProtocol:
            return _TlsCountingProtocol(self, tls=True)

        return client

    def tls_protocol_factory(
        self,
        context: ssl.SSLContext,
        handshake_timeout: float | None,
        server_names: ServerNameSlot | None = None,
    ) -> Callable[[], TlsTransport]:
        """The edge's TLS layer over this engine's HTTPS client protocol: admitted under the
        connection caps, handshakes counted (``serve`` and the PROXY-protocol listener)."""
        return tls_factory(
            context=context,
            handshake_timeout=handshake_timeout,
            limiter=self.limiter,
            make_client=self.protocol_factory(tls=True),
            on_admitted=self.handshakes.start,
            on_failed=self.handshakes.fail,
            server_names=server_names,
            make_h2=self._make_h2 if self.http2 else None,
        )

    def _make_h2(self, negotiated: ClientProtocol) -> ClientProtocol:
        """The HTTP/2 protocol of a TLS connection that negotiated ALPN ``h2``."""
        h2 = EdgeH2(self, tls=True, limits=self.h2_limits)
        h2.take_over(negotiated)
        return h2

    async def serve(
        self,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        backlog: int = 1024,
        server_names: ServerNameSlot | None = None,
    ) -> asyncio.Server:
        """Plain HTTP as the core serves it; HTTPS through the edge's own TLS layer, every
        connection admitted under the connection caps when TCP accepts it (``tls_transport``);
        ``server_names``: the slot the context's SNI callback fills (``ClientInfo.sni``)."""
        loop = asyncio.get_running_loop()
        if ssl_context is None:
            factory = self.protocol_factory(tls=False)
        else:
            factory = self.tls_protocol_factory(ssl_context, ssl_handshake_timeout, server_names)
        server = await loop.create_server(factory, sock=sock, backlog=backlog)
        self.listening(server)
        return server
