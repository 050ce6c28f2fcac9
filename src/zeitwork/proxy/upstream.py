"""One keep-alive connection to a backend: writes requests, parses responses (httptools).

The protocol only moves bytes and reports parse events to the client connection that owns
the current exchange, which it knows as an ``UpstreamOwner`` (the root base of
``connection.Connection`` and so of ``client.ClientProtocol``); it returns itself to its
backend's idle list when a response ends cleanly.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools
from mypy_extensions import mypyc_attr

from zeitwork.proxy.headers import MAX_HEADER_BYTES
from zeitwork.proxy.output import FLUSH_NOW_BYTES, OutputFlusher, write_out
from zeitwork.proxy.state import Exchange

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend


@mypyc_attr(allow_interpreted_subclasses=True)
class UpstreamOwner:
    """The client side of the exchange (or tunnel) an upstream connection carries: what the
    backend's bytes and events are reported to (the root of ``connection.Connection``, which
    implements it). A native base rather than a Protocol: these calls are made for every read
    of a response, and through a Protocol they would be Python calls in the compiled build."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # set whenever a byte moves on this connection or its upstream; the deadline sweep
        # turns it into a later deadline for the kinds that are renewed by activity (one
        # attribute store per read instead of a clock read)
        self.active = False

    def flush(self) -> None:
        raise NotImplementedError

    def pause_reading_for(self, reason: int) -> None:
        raise NotImplementedError

    def resume_reading_for(self, reason: int) -> None:
        raise NotImplementedError

    def upstream_head(self, ex: Exchange, up: UpstreamProtocol, status: int) -> bool:
        """Write the rebuilt response head; return True when no body follows (HEAD)."""
        raise NotImplementedError

    def upstream_body(self, ex: Exchange, body: bytes) -> None:
        raise NotImplementedError

    def upstream_complete(self, ex: Exchange, up: UpstreamProtocol, keep_alive: bool) -> None:
        raise NotImplementedError

    def upstream_upgraded(self, up: UpstreamProtocol, rest: bytes) -> None:
        raise NotImplementedError

    def upstream_garbage(self, ex: Exchange, up: UpstreamProtocol) -> None:
        raise NotImplementedError

    def upstream_lost(self, ex: Exchange, up: UpstreamProtocol) -> None:
        raise NotImplementedError

    def tunnel_data(self, data: bytes) -> None:
        raise NotImplementedError

    def tunnel_closed(self) -> None:
        raise NotImplementedError

    def tunnel_backend_eof(self) -> None:
        """The backend of this connection's tunnel shut its sending side."""
        raise NotImplementedError


class _ResponseSink:
    pass


_NO_PARSER = httptools.HttpResponseParser(_ResponseSink())


@mypyc_attr(allow_interpreted_subclasses=True)  # proxy.h2c_stream's streams
class UpstreamProtocol:
    """One upstream connection (an asyncio protocol by duck typing, so that the module can be
    compiled with mypyc)."""

    __slots__ = (
        "_header_bytes",
        "_interim",
        "_skip",
        "backend",
        "client",
        "closed",
        "ex",
        "flusher",
        "got_bytes",
        "headers",
        "out",
        "out_bytes",
        "parser",
        "reason",
        "reusable",
        "served",
        "transport",
        "tunnel",
    )

    def __init__(self, backend: Backend, flusher: OutputFlusher) -> None:
        self.backend = backend
        self.flusher = flusher
        self.out: list[bytes] = []  # queued for the flusher (written at the iteration's end)
        self.out_bytes = 0
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.client: UpstreamOwner | None = None
        self.reusable = False
        self.closed = False
        self.served = 0
        self.got_bytes = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self._header_bytes = 0
        self._interim = False
        self._skip = False
        self.tunnel: UpstreamOwner | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.backend.upstream_connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.reusable = False
        self.parser = _NO_PARSER  # break the protocol <-> parser cycle
        self.backend.upstream_connections -= 1
        if self.tunnel is not None:
            peer, self.tunnel = self.tunnel, None
            peer.tunnel_closed()
            return
        ex = self.ex
        if ex is None:
            self.backend.forget_idle(self)
            return
        client = self.client
        self.ex = None
        if client is not None:
            client.upstream_lost(ex, self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_data(data)
            return
        if self.ex is None:
            # bytes on an idle connection: the backend is confused; never reuse it
            self.close()
            return
        self.got_bytes = True
        client = self.client
        if client is not None:
            client.active = True  # the exchange is moving: its idle deadline is renewed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            if client is not None and self.ex is not None:
                client.upstream_upgraded(self, data[offset:])
        except httptools.HttpParserError:
            ex = self.ex
            if ex is not None and client is not None:
                self.ex = None
                client.upstream_garbage(ex, self)
            self.close()
        finally:
            self._skip = False

    def eof_received(self) -> bool | None:
        """The backend closed its sending side. In a tunnel the client gets the half-close
        and the other direction stays open; otherwise the transport closes and
        ``connection_lost`` ends the exchange (a close-delimited body is then complete)."""
        peer = self.tunnel
        if peer is not None:
            peer.tunnel_backend_eof()  # the half-close passed on, or the tunnel's end
            return True
        return None

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading_for(2)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading_for(2)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._skip:
            return
        self.headers = []
        self.reason = b""
        self._header_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._skip:
            return
        self._header_bytes += len(name) + len(value)
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._skip:
            return
        if self._header_bytes > MAX_HEADER_BYTES:
            raise httptools.HttpParserError("response headers too large")
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 100/103 interim answers are not relayed
            return
        client = self.client
        ex = self.ex
        if client is None or ex is None:
            return
        if status == 101:
            self._interim = True  # the tunnel starts when the parser reports the upgrade
        if client.upstream_head(ex, self, status):
            # no body follows (HEAD): the response is done now; a fresh parser for the next
            self._skip = True
            self.parser = httptools.HttpResponseParser(self)
            client.upstream_complete(ex, self, self._keep_alive_after_head())

    def _keep_alive_after_head(self) -> bool:
        for name, value in self.headers:
            if name.lower() == b"connection" and b"close" in value.lower():
                return False
        return True

    def on_body(self, body: bytes) -> None:
        if self._skip:
            return
        client = self.client
        ex = self.ex
        if client is not None and ex is not None:
            client.upstream_body(ex, body)

    def on_message_complete(self) -> None:
        if self._skip:
            return
        if self._interim:
            self._interim = False
            return
        client = self.client
        ex = self.ex
        if client is not None and ex is not None:
            client.upstream_complete(ex, self, self.parser.should_keep_alive())

    # -- engine API --------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue ``data``; the proxy's flusher writes it at the end of the loop iteration."""
        if self.transport is None or self.closed:
            return
        out = self.out
        out.append(data)
        self.out_bytes += len(data)
        if len(out) == 1:
            self.flusher.add_upstream(self)
        if self.out_bytes >= FLUSH_NOW_BYTES:
            self.flush()

    def writelines(self, parts: list[bytes]) -> None:
        if self.transport is None or self.closed or not parts:
            return
        out = self.out
        was_empty = not out
        out.extend(parts)
        self.out_bytes += sum(map(len, parts))
        if was_empty:
            self.flusher.add_upstream(self)
        if self.out_bytes >= FLUSH_NOW_BYTES:
            self.flush()

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        self.out = []
        self.out_bytes = 0
        transport = self.transport
        if transport is not None and not self.closed and not transport.is_closing():
            write_out(transport, out)

    def last_chunk(self) -> bytes:
        """The end of a chunked response to an HTTP/1.1 client (an HTTP/1.1 backend's own
        trailers are not forwarded; an h2c stream's are)."""
        return b"0\r\n\r\n"

    def release(self) -> None:
        """The exchange ended cleanly: back to the backend's idle list."""
        self.ex = None
        self.client = None
        self.served += 1
        if self.closed:
            return
        if self.transport is not None and self.transport.is_reading() is False:
            self.transport.resume_reading()
        self.reusable = True
        self.backend.put_idle(self)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.closed:
            self.flush()
            self.transport.close()

    def fail(self) -> None:
        """Abort the connection but keep its exchange: ``connection_lost`` reports the loss
        to the client side (502, or a retry on a fresh connection)."""
        self.reusable = False
        self.out = []
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def abort(self) -> None:
        self.reusable = False
        self.out = []
        self.ex = None
        self.client = None
        if self.transport is not None and not self.closed:
            self.transport.abort()
