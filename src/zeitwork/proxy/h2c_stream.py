"""One exchange's stream to an h2c backend (``h2_upstream``): the core's HTTP/1.1 request
made into an HTTP/2 stream, and the stream's answer made into the calls an HTTP/1.1 backend's
makes.

``H2UpstreamStream`` is an ``UpstreamProtocol`` to the core: it reads the HTTP/1.1 request the
core writes to it (``httptools``) and sends it as one stream on its connection; its response
comes back through ``upstream_head``, ``upstream_body`` and ``upstream_complete``, its
trailers appended to ``headers`` as the HTTP/1.1 parser appends chunked trailers, and written
in the last chunk for an HTTP/1.1 client (``last_chunk``). Its flow control, this side: past
``BUFFER_LIMIT`` request bytes waiting for the backend's window the client is no longer read,
and response DATA is handed on (and acknowledged) only while the core reads the stream's
"transport". It knows its connection as a ``StreamCarrier``
(``h2_upstream.H2UpstreamConnection``), which imports this module.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Protocol, cast

import httptools
from h2.errors import ErrorCodes

from zeitwork.proxy.headers import HOP_BY_HOP
from zeitwork.proxy.output import OutputFlusher
from zeitwork.proxy.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend

BUFFER_LIMIT = 256 * 1024  # request bytes held per stream before the client is paused

# never sent as HTTP/2 fields (RFC 9113 8.2.2); ``te: trailers`` is added on every request
# (gRPC servers require it, and the proxy forwards trailers)
_REQUEST_DROPPED = HOP_BY_HOP | {b"host", b"http2-settings"}
# never forwarded as trailer fields in an HTTP/1.1 last chunk (RFC 9110 6.5.1)
_TRAILER_DROPPED = HOP_BY_HOP | {b"content-length", b"content-type", b"host"}
# a gRPC "Trailers-Only" answer (one HEADERS frame with END_STREAM) carries its status and
# trailing metadata in the head: all but these become trailers, so that they end the stream on
# the far side as a trailing HEADERS frame (a valid gRPC answer: a head, no message, trailers)
_GRPC_HEAD_FIELDS = frozenset({b"content-type"})


class StreamCarrier(Protocol):
    """The h2c connection a stream runs on (``h2_upstream.H2UpstreamConnection``)."""

    # exchanges given the connection whose request head has not been sent yet
    reserved: int

    @property
    def backend(self) -> Backend: ...

    def open_stream(self, stream: H2UpstreamStream, headers: list[tuple[bytes, bytes]]) -> None: ...

    def pump(self, stream: H2UpstreamStream) -> None: ...

    def acknowledge(self, stream: H2UpstreamStream | None, flow: int) -> None: ...

    def reset(self, stream: H2UpstreamStream, code: int) -> None: ...

    def forget(self, stream: H2UpstreamStream) -> None: ...


class _RequestReader:
    """httptools callbacks for the HTTP/1.1 request the core writes into a stream."""

    def __init__(self, stream: H2UpstreamStream) -> None:
        self.stream = stream
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.stream.request_head(self.url, self.fields)

    def on_body(self, body: bytes) -> None:
        self.stream.request_body(body)

    def on_message_complete(self) -> None:
        self.stream.request_end()


class _StreamTransport:
    """What the core sees as the upstream's transport: pausing it stops acknowledging the
    stream's response DATA, so the backend's window for the stream closes."""

    def __init__(self, stream: H2UpstreamStream) -> None:
        self.stream = stream
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        if not self.reading:
            self.reading = True
            self.stream.deliver()

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.stream.closed

    def write(self, data: bytes) -> None:
        self.stream.feed_request(data)

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.stream.feed_request(part)

    def close(self) -> None:
        self.stream.close()

    def abort(self) -> None:
        self.stream.abort()


class H2UpstreamStream(UpstreamProtocol):
    """One exchange's stream on an h2c connection, an upstream connection to the core (it is
    never put in the backend's idle list: its connection is shared instead)."""

    def __init__(self, conn: StreamCarrier, flusher: OutputFlusher) -> None:
        super().__init__(conn.backend, flusher)
        self.conn = conn
        self.stream_id = 0  # given when the request head has been read
        self.side = _StreamTransport(self)
        self.transport = cast(asyncio.Transport, self.side)
        self.reader = _RequestReader(self)
        self.request_parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(
            self.reader
        )
        self.outgoing: deque[bytes] = deque()  # request DATA waiting for the backend's window
        self.outgoing_bytes = 0
        self.outgoing_end = False
        self.request_done = False  # END_STREAM sent
        self.client_paused = False
        self.held: deque[tuple[bytes, int]] = deque()  # response DATA not yet taken
        self.held_end = False
        self.trailers: list[tuple[bytes, bytes]] = []
        self.response_started = False
        self.ended = False

    # -- the core writes the HTTP/1.1 request here ---------------------------------------------
    def write(self, data: bytes) -> None:
        self.feed_request(data)

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.feed_request(part)

    def flush(self) -> None:
        return None

    def feed_request(self, data: bytes) -> None:
        parser = self.request_parser
        if parser is None or self.closed or not data:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError:
            # the core wrote a request it had parsed itself: not expected; the exchange fails
            self.request_parser = None
            self.fail()

    def request_head(self, url: bytes, fields: list[tuple[bytes, bytes]]) -> None:
        parser = self.request_parser
        assert parser is not None
        method = parser.get_method()
        authority = b""
        headers: list[tuple[bytes, bytes]] = []
        for name, value in fields:
            if name == b"host":
                authority = value
            elif name not in _REQUEST_DROPPED:
                headers.append((name, value))
        headers.append((b"te", b"trailers"))
        pseudo = [(b":method", method), (b":scheme", b"http")]
        if authority:
            pseudo.append((b":authority", authority))
        pseudo.append((b":path", url or b"/"))
        self.conn.open_stream(self, pseudo + headers)

    def request_body(self, body: bytes) -> None:
        if not body:
            return
        self.outgoing.append(body)
        self.outgoing_bytes += len(body)
        self.conn.pump(self)
        if self.outgoing_bytes > BUFFER_LIMIT and not self.client_paused:
            self.client_paused = True
            self.pause_writing()  # the core's client: stop reading the request body

    def request_end(self) -> None:
        self.outgoing_end = True
        self.request_parser = None
        self.conn.pump(self)

    def sent(self) -> None:
        """Called by the connection after sending some of ``outgoing``."""
        if self.client_paused and self.outgoing_bytes <= BUFFER_LIMIT // 2:
            self.client_paused = False
            self.resume_writing()

    # -- the backend's answer ------------------------------------------------------------------
    def on_response(self, status: int, fields: list[tuple[bytes, bytes]], ended: bool) -> None:
        client, ex = self.client, self.ex
        self.got_bytes = True
        headers = [(n, v) for n, v in fields if n[:1] != b":"]
        has_length = any(n == b"content-length" for n, _ in headers)
        grpc = any(n == b"content-type" and v.startswith(b"application/grpc") for n, v in headers)
        if ended and grpc:
            # gRPC's "Trailers-Only": status, content-type, then every field is a trailer
            self.trailers = [(n, v) for n, v in headers if n not in _GRPC_HEAD_FIELDS]
            headers = [(n, v) for n, v in headers if n in _GRPC_HEAD_FIELDS]
            has_length = False
        if not has_length and not (ended and not grpc):
            headers.append((b"transfer-encoding", b"chunked"))  # the core re-frames the body
        elif not has_length and status not in (204, 304):
            headers.append((b"content-length", b"0"))
        self.headers = headers
        self.response_started = True
        if client is None or ex is None:
            return
        client.active = True
        try:
            head_only = client.upstream_head(ex, self, status)
        except httptools.HttpParserError:  # a response the client side cannot take (101)
            self.ex = None
            client.upstream_garbage(ex, self)
            self.abort()
            return
        if head_only:
            self.held_end = False
            self._complete()
            return
        if ended:
            self.on_end()

    def on_data(self, data: bytes, flow: int) -> None:
        self.held.append((data, flow))
        self.deliver()

    def on_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.trailers = [(n, v) for n, v in fields if n[:1] != b":"]

    def on_end(self) -> None:
        self.held_end = True
        self.deliver()

    def deliver(self) -> None:
        """Hand held response DATA to the core while it reads, acknowledging it."""
        while self.held and self.side.reading and not self.closed:
            data, flow = self.held.popleft()
            client, ex = self.client, self.ex
            if client is None or ex is None:
                self.conn.acknowledge(self, flow)
                continue
            client.active = True
            if data:
                client.upstream_body(ex, data)
            self.conn.acknowledge(self, flow)
        if self.held_end and not self.held and not self.closed:
            self.held_end = False
            self._complete()

    def _complete(self) -> None:
        client, ex = self.client, self.ex
        self.ended = True
        if self.trailers:
            self.headers = self.headers + self.trailers  # where the core's h2 side looks
        if client is not None and ex is not None:
            client.upstream_complete(ex, self, True)
        else:
            self.conn.forget(self)

    def last_chunk(self) -> bytes:
        """The last chunk of an HTTP/1.1 chunked response, with the trailers."""
        fields = [
            b"%s: %s\r\n" % (n, v) for n, v in self.trailers if n.lower() not in _TRAILER_DROPPED
        ]
        return b"0\r\n" + b"".join(fields) + b"\r\n"

    def on_reset(self, refused: bool) -> None:
        """The backend reset the stream, or the connection ended under it."""
        if self.closed:
            return
        self.closed = True
        if not self.stream_id:  # its head never went out: its place is free again
            self.conn.reserved = max(0, self.conn.reserved - 1)
        client, ex = self.client, self.ex
        self.ex = None
        self.client = None
        self.conn.forget(self)
        if client is None or ex is None:
            return
        if refused and not self.response_started:
            # never processed by the backend (RFC 9113 8.7): retried as a request on a stale
            # connection is, whatever its method (as if its head had not gone out)
            self.served = 1
            self.got_bytes = False
            ex.sent_head = False
        client.upstream_lost(ex, self)

    # -- the core's calls ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_reset(refused=False)

    def data_received(self, data: bytes) -> None:
        return None

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_reading_for(2)

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_reading_for(2)

    def release(self) -> None:
        """The exchange ended cleanly: the stream is over (its connection stays shared)."""
        self.ex = None
        self.client = None
        self.served += 1
        self._end_stream(ErrorCodes.NO_ERROR)

    def close(self) -> None:
        self.ex = None
        self.client = None
        self._end_stream(ErrorCodes.CANCEL)

    def fail(self) -> None:
        """Abort the stream but report the loss to the exchange (a 502 or a retry)."""
        self.conn.reset(self, ErrorCodes.CANCEL)
        self.on_reset(refused=False)

    def abort(self) -> None:
        self.ex = None
        self.client = None
        self._end_stream(ErrorCodes.CANCEL)

    def _end_stream(self, code: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.held.clear()
        self.outgoing.clear()
        if not (self.ended and self.request_done):
            # the response is not over, or the request body is still being sent: the backend
            # need not go on (NO_ERROR when the response is complete, RFC 9113 8.1)
            self.conn.reset(self, ErrorCodes.NO_ERROR if self.ended else code)
        self.conn.forget(self)
