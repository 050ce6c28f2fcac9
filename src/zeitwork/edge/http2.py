"""HTTP/2 at the edge: the core's HTTP/2 connection with the edge's error pages and handshake
accounting (ALPN ``h2`` on TLS), and the plain-HTTP protocol that turns into it when a client
opens with the HTTP/2 preface (h2c with prior knowledge, ``EDGE_H2C``).

Not in the compiled list (``hatch_build.py``), where ``proxy.http2`` is: the classes here are
interpreted subclasses of the core's (compiled) protocols, which allow them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from zeitwork.edge.policy import html_page, wants_html
from zeitwork.proxy.h2_rules import H2Limits
from zeitwork.proxy.http2 import PREFACE, H2Connection
from zeitwork.proxy.server import ClientProtocol, Proxy
from zeitwork.proxy.types import Headers

if TYPE_CHECKING:
    from zeitwork.edge.tls_transport import HandshakeCounter


def _edge_error(
    status: int, detail: str, headers: Headers, core: tuple[bytes, bytes]
) -> tuple[bytes, bytes]:
    """The edge's rendering of the core's own answers: HTML for a client that prefers it."""
    if wants_html(headers):
        return b"text/html; charset=utf-8", html_page(status, detail)
    return core


class EdgeH2(H2Connection):
    """One HTTP/2 connection at the edge; over TLS it counts the completed handshake."""

    def render_error(self, status: int, detail: str, headers: Headers) -> tuple[bytes, bytes]:
        return _edge_error(status, detail, headers, super().render_error(status, detail, headers))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.tls:
            handshakes: HandshakeCounter = self.proxy.handshakes  # type: ignore[attr-defined]
            handshakes.completed += 1
        super().connection_made(transport)


class H2cSniffer(ClientProtocol):
    """The plain-HTTP protocol when h2c is on: a connection whose first bytes are the HTTP/2
    client preface becomes an ``EdgeH2``; any other is served as HTTP/1.1."""

    def __init__(self, proxy: Proxy, *, tls: bool, limits: H2Limits) -> None:
        super().__init__(proxy, tls=tls)
        self.engine = proxy  # as a ``Proxy`` (``self.proxy`` is typed as what a connection uses)
        self.limits = limits
        self._sniffing = True
        self._sniffed = b""

    def render_error(self, status: int, detail: str, headers: Headers) -> tuple[bytes, bytes]:
        return _edge_error(status, detail, headers, super().render_error(status, detail, headers))

    def data_received(self, data: bytes) -> None:
        if not self._sniffing:
            super().data_received(data)
            return
        data = self._sniffed + data
        if PREFACE.startswith(data[: len(PREFACE)]):
            if len(data) < len(PREFACE):
                self._sniffed = data  # too few bytes yet to tell
                return
            self._sniffing = False
            self._sniffed = b""
            self._become_h2(data)
            return
        self._sniffing = False
        self._sniffed = b""
        super().data_received(data)

    def _become_h2(self, data: bytes) -> None:
        transport = self.transport
        proxy = self.proxy
        if transport is None or not self.admitted:
            return
        # this protocol gives its place under the caps back (as connection_lost would) and
        # the HTTP/2 one takes it again in its connection_made
        self.admitted = False
        if self._holds_refusal:
            self._holds_refusal = False
            proxy.release_refusal()
        elif proxy.limiter is not None and not self.preadmitted and not self.refused:
            proxy.limiter.release(self.peer_ip)
        proxy.connections.discard(self)
        proxy.observer.connections_changed(-1)
        self.transport = None
        h2 = EdgeH2(self.engine, tls=False, limits=self.limits)
        h2.forced_peer = self.forced_peer
        h2.preadmitted = self.preadmitted
        transport.set_protocol(cast(asyncio.BaseProtocol, h2))  # a protocol by duck typing
        h2.connection_made(transport)
        if h2.admitted:
            h2.data_received(data)
