"""The HTTPS listener: connections are admitted when TCP accepts them, before the handshake.

The event loop's TLS server (``create_server(ssl=...)``) hands a connection to the
application only once its handshake is done, so connection caps applied there do not see the
connections still in their handshake: one address could hold thousands of TCP connections
that never send a ClientHello (or send it a byte at a time), each holding the TLS layer's
buffers until ``EDGE_HANDSHAKE_TIMEOUT``, without ever reaching its cap.

Here the HTTPS socket is served as plain TCP whose protocol is the loop's own TLS protocol
class (uvloop's, or asyncio's on the default loop; the same class the loop's TLS server
uses, so the data path is unchanged), subclassed to take a place under the per-address and
total caps the moment the connection is accepted. A refused connection is aborted before
OpenSSL sees a byte of it; the place is given back when the TCP connection ends, whether or
not its handshake completed. The edge's client protocol is told the connection is admitted
(``ClientProtocol.preadmitted``) and does not count it again.

This module is not compiled (``hatch_build.py``): mypyc classes cannot subclass the loop's
extension class.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
from collections.abc import Callable
from typing import Any, cast

import uvloop
import uvloop.loop

from zeitwork.proxy.server import ClientProtocol, peer_address
from zeitwork.proxy.types import ConnectionLimiter


def _base_class(loop: asyncio.AbstractEventLoop) -> type[Any]:
    """The TLS protocol class ``loop`` uses for its own TLS servers."""
    if isinstance(loop, uvloop.Loop):
        return uvloop.loop.SSLProtocol  # type: ignore[attr-defined,no-any-return]
    return asyncio.sslproto.SSLProtocol


def admitting_tls_factory(
    *,
    loop: asyncio.AbstractEventLoop,
    context: ssl.SSLContext,
    handshake_timeout: float | None,
    limiter: ConnectionLimiter | None,
    make_client: Callable[[], ClientProtocol],
    on_admitted: Callable[[], None],
) -> Callable[[], asyncio.BaseProtocol]:
    """A protocol factory for ``loop.create_server`` on a plain socket that serves TLS with
    ``context``: each accepted connection takes a place under ``limiter`` (or is aborted),
    ``on_admitted`` runs (handshake accounting), and the TLS layer then carries the
    ``make_client()`` protocol."""

    class AdmittingTlsProtocol(_base_class(loop)):  # type: ignore[misc]
        """The loop's server-side TLS protocol, admitting its connection first."""

        client: ClientProtocol | None = None  # until connection_made (no cycle after)
        held = ""  # the address whose place this connection holds

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            client, self.client = self.client, None
            assert client is not None
            ip = peer_address(transport)
            if limiter is not None:
                if not limiter.acquire(ip):
                    cast(asyncio.Transport, transport).abort()  # nothing of TLS set up yet
                    return
                self.held = ip
            client.forced_peer = ip
            client.preadmitted = True
            on_admitted()
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.held:
                assert limiter is not None
                limiter.release(self.held)
                self.held = ""
            super().connection_lost(exc)

    def factory() -> asyncio.BaseProtocol:
        client = make_client()
        protocol = AdmittingTlsProtocol(
            loop, client, context, None, server_side=True, ssl_handshake_timeout=handshake_timeout
        )
        protocol.client = client
        return cast(asyncio.BaseProtocol, protocol)

    return factory
