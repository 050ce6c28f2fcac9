"""h2c (HTTP/2 over cleartext, prior knowledge) to a backend, on the sans-io ``h2`` library.

A backend whose ``protocol`` is ``"h2c"`` (a release deployed with ``backend_protocol:
h2c``, e.g. a gRPC server) is reached here instead of over HTTP/1.1 keep-alive. The core's
client protocols stay as they are: each exchange gets an ``H2UpstreamStream``, an
``UpstreamProtocol`` to them, which reads the HTTP/1.1 request the core writes to it
(``httptools``) and sends it as one HTTP/2 stream; the stream's response comes back through
the same calls an HTTP/1.1 backend's does (``upstream_head``, ``upstream_body``,
``upstream_complete``), its trailers kept: appended to ``headers`` as the HTTP/1.1 parser
appends chunked trailers (an HTTP/2 client of the edge gets them as a trailing HEADERS frame),
and written in the last chunk for an HTTP/1.1 client (``last_chunk``: the load balancer to the
edge). ``docs/http2.md`` says why the edge to load balancer hop stays HTTP/1.1.

Streams share connections (``H2Upstreams``): at most ``MAX_STREAMS`` per connection (or the
backend's SETTINGS_MAX_CONCURRENT_STREAMS, if lower), a new connection past that. Flow control
both ways: request bytes wait in the stream while the backend's window is shut, and past
``BUFFER_LIMIT`` the client is no longer read; response DATA is acknowledged (WINDOW_UPDATE)
only as the client takes it: while the core has paused the stream's "transport" (a slow
client), DATA waits unacknowledged, so the backend's window closes. A stream the backend
refuses (REFUSED_STREAM, or above its GOAWAY's last stream) is retried as a stale keep-alive
connection is; a reset after the response began is a truncated response (the client's stream
is reset, or its HTTP/1.1 connection closed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httptools
import structlog
from h2.errors import ErrorCodes

from zeitwork.proxy.headers import HOP_BY_HOP
from zeitwork.proxy.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend

# The core's client protocol (``client.ClientProtocol``), its exchange (``exchange.Exchange``)
# and flusher (``engine.OutputFlusher``) are not imported, even for type checking: the
# exchange module calls ``assign`` here, and the proxy core's modules import no cycle.
ClientProtocol = Any
Exchange = Any
OutputFlusher = Any

_log = structlog.get_logger("zeitwork.proxy")
_S = h2.settings.SettingCodes

H2C = "h2c"
HTTP1 = "http1"
MAX_STREAMS = 100  # per connection, at most (the backend may allow fewer)
STREAM_WINDOW = 1024 * 1024  # our receive window per stream
CONNECTION_WINDOW = 16 * 1024 * 1024
BUFFER_LIMIT = 256 * 1024  # request bytes held per stream before the client is paused
IDLE_CLOSE = 60.0  # a connection with no stream for this long is closed

# never sent as HTTP/2 fields (RFC 9113 8.2.2); ``te: trailers`` is added on every request
# (gRPC servers require it, and the proxy forwards trailers)
_REQUEST_DROPPED = HOP_BY_HOP | {b"host", b"http2-settings"}
# never forwarded as trailer fields in an HTTP/1.1 last chunk (RFC 9110 6.5.1)
_TRAILER_DROPPED = HOP_BY_HOP | {b"content-length", b"content-type", b"host"}
# a gRPC "Trailers-Only" answer (one HEADERS frame with END_STREAM) carries its status and
# trailing metadata in the head: all but these become trailers, so that they end the stream on
# the far side as a trailing HEADERS frame (a valid gRPC answer: a head, no message, trailers)
_GRPC_HEAD_FIELDS = frozenset({b"content-type"})


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
    """One exchange's stream on an ``H2UpstreamConnection``, an upstream connection to the
    core (it is never put in the backend's idle list: its connection is shared instead)."""

    def __init__(self, conn: H2UpstreamConnection, flusher: OutputFlusher) -> None:
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


class H2UpstreamConnection:
    """One h2c connection to a backend (an asyncio protocol by duck typing)."""

    def __init__(self, backend: Backend, upstreams: H2Upstreams) -> None:
        self.backend = backend
        self.upstreams = upstreams
        self.transport: asyncio.Transport | None = None
        self.h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.streams: dict[int, H2UpstreamStream] = {}
        self.reserved = 0  # exchanges given this connection whose head is not sent yet
        self.closed = False
        self.goaway = False
        self.write_paused = False
        self.idle_handle: asyncio.TimerHandle | None = None
        self.send_scheduled = False
        self.ready: asyncio.Task[None] | None = None  # the connect, while it runs

    # -- capacity ------------------------------------------------------------------------------
    def capacity(self) -> int:
        if self.closed or self.goaway:
            return 0
        peer = self.h2.remote_settings.max_concurrent_streams
        return min(MAX_STREAMS, peer) - len(self.streams) - self.reserved

    # -- asyncio protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.backend.upstream_connections += 1
        conn = self.h2
        conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                _S.ENABLE_PUSH: 0,
                _S.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                _S.MAX_CONCURRENT_STREAMS: 0,  # the backend opens no streams of its own
            },
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self._send_now()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and not self.streams:
            self._gone()
            return
        self.closed = True
        self._gone()
        for stream in list(self.streams.values()):
            stream.on_reset(refused=False)
        self.streams.clear()

    def _gone(self) -> None:
        if self.transport is not None:
            self.transport = None
            self.backend.upstream_connections -= 1
        self.closed = True
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.upstreams.discard(self)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in self.streams.values():
            stream.pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.resume_writing()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            if self.h2.state_machine.state == h2.connection.ConnectionState.CLOSED:
                # h2 takes nothing after a GOAWAY (not even the PING a gRPC server sends with
                # its graceful one): streams still open are lost (docs/http2.md)
                _log.info(
                    "proxy.h2c_backend_goaway",
                    backend=self.backend.address,
                    streams=len(self.streams),
                )
            else:
                _log.warning(
                    "proxy.h2c_backend_protocol_error",
                    backend=self.backend.address,
                    error=str(exc),
                )
            self._fatal(ErrorCodes.PROTOCOL_ERROR)
            return
        for event in events:
            self._on_event(event)
        self._send_now()

    def _on_event(self, event: Any) -> None:
        streams = self.streams
        if isinstance(event, h2.events.ResponseReceived):
            stream = streams.get(event.stream_id)
            if stream is not None:
                status = 0  # h2 checked it: three digits, 1xx as InformationalResponseReceived
                for name, value in event.headers:
                    if name == b":status":
                        status = int(value)
                stream.on_response(status, list(event.headers), event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            stream = streams.get(event.stream_id)
            if stream is None:
                self.acknowledge(None, event.flow_controlled_length)
                return
            stream.on_data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.on_trailers(list(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.StreamReset):
            stream = streams.get(event.stream_id)
            if stream is not None:
                stream.on_reset(refused=event.error_code == ErrorCodes.REFUSED_STREAM)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for stream in list(streams.values()):
                self.pump(stream)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid, stream in list(streams.items()):
                if sid > last:  # never processed: safe to retry
                    stream.on_reset(refused=True)
            if not self.streams:
                self.close()

    # -- streams -------------------------------------------------------------------------------
    def open_stream(self, stream: H2UpstreamStream, headers: list[tuple[bytes, bytes]]) -> None:
        self.reserved = max(0, self.reserved - 1)
        if self.closed or self.goaway:
            stream.on_reset(refused=True)
            return
        sid = self.h2.get_next_available_stream_id()
        stream.stream_id = sid
        self.streams[sid] = stream
        self._touch()
        try:
            self.h2.send_headers(sid, headers)
        except h2.exceptions.ProtocolError:
            _log.warning("proxy.h2c_request_refused", backend=self.backend.address)
            stream.fail()
            return
        self._send_soon()

    def pump(self, stream: H2UpstreamStream) -> None:
        """Send what the backend's windows allow of the stream's request body, then its end."""
        sid = stream.stream_id
        if not sid or stream.closed or stream.request_done or self.closed:
            return
        conn = self.h2
        outgoing = stream.outgoing
        moved = False
        try:
            while outgoing:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = outgoing[0]
                if len(chunk) > window:
                    conn.send_data(sid, chunk[:window])
                    outgoing[0] = chunk[window:]
                    stream.outgoing_bytes -= window
                else:
                    conn.send_data(sid, chunk)
                    outgoing.popleft()
                    stream.outgoing_bytes -= len(chunk)
                moved = True
            if not outgoing and stream.outgoing_end:
                conn.end_stream(sid)
                stream.request_done = True
                moved = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            # the backend closed its side (it answered early): the rest is not sent
            outgoing.clear()
            stream.outgoing_bytes = 0
            stream.request_done = True
        if moved:
            self._send_soon()
        stream.sent()

    def acknowledge(self, stream: H2UpstreamStream | None, flow: int) -> None:
        if not flow or self.closed:
            return
        sid = stream.stream_id if stream is not None else 0
        try:
            self.h2.acknowledge_received_data(flow, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(flow, 0)
        self._send_soon()

    def reset(self, stream: H2UpstreamStream, code: int) -> None:
        sid = stream.stream_id
        if not sid or self.closed:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.reset_stream(sid, code)
        self._send_soon()

    def forget(self, stream: H2UpstreamStream) -> None:
        if self.streams.pop(stream.stream_id, None) is None:
            return
        self._touch()
        if (self.goaway or self.backend.draining) and not self.streams and not self.reserved:
            self.close()  # a backend out of the table keeps no idle connection (as its pool)

    def _touch(self) -> None:
        """(Re)arm the idle close when the last stream ends; disarm it while streams run."""
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        if not self.streams and not self.reserved and not self.closed:
            loop = asyncio.get_running_loop()
            self.idle_handle = loop.call_later(IDLE_CLOSE, self._idle)

    def _idle(self) -> None:
        self.idle_handle = None
        if not self.streams and not self.reserved:
            self.close()

    # -- output --------------------------------------------------------------------------------
    def _send_soon(self) -> None:
        """Write what h2 queued at the end of this loop iteration (many frames, one write)."""
        if not self.send_scheduled:
            self.send_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_now)

    def _send_now(self) -> None:
        self.send_scheduled = False
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        """Graceful: GOAWAY, then the socket closes (only once no stream is open)."""
        if self.transport is None:
            self._gone()
            return
        self.goaway = True
        if self.streams:
            return
        self.closed = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection()
        self._send_now()
        self.transport.close()
        self.upstreams.discard(self)

    def _fatal(self, code: int) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(code)
        self._send_now()
        self.closed = True
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.on_reset(refused=False)
        if self.transport is not None:
            self.transport.close()
        self.upstreams.discard(self)


class H2Upstreams:
    """The h2c connections of one proxy process, per backend."""

    def __init__(self) -> None:
        self.by_backend: dict[Backend, list[H2UpstreamConnection]] = {}

    def discard(self, conn: H2UpstreamConnection) -> None:
        conns = self.by_backend.get(conn.backend)
        if conns is not None:
            with contextlib.suppress(ValueError):
                conns.remove(conn)
            if not conns:
                del self.by_backend[conn.backend]

    def assign(self, client: ClientProtocol, ex: Exchange, backend: Backend) -> None:
        """Give ``ex`` a stream to ``backend``: on a connection with room (waiting for it if
        it is still connecting), or on a new one."""
        chosen: H2UpstreamConnection | None = None
        for conn in self.by_backend.get(backend, ()):
            if conn.capacity() > 0:
                chosen = conn
                break
        if chosen is None:
            chosen = H2UpstreamConnection(backend, self)
            self.by_backend.setdefault(backend, []).append(chosen)
            timeout = client.proxy.config.connect_timeout
            ready = asyncio.get_running_loop().create_task(self._connect(chosen, timeout))
            # its failure is each waiter's to report; retrieved here too should none be left
            ready.add_done_callback(lambda t: t.cancelled() or t.exception())
            chosen.ready = ready
        if chosen.transport is not None:
            self._attach(client, ex, chosen)
            return
        chosen.reserved += 1
        ex.connect_task = asyncio.get_running_loop().create_task(self._wait(client, ex, chosen))

    @staticmethod
    async def _connect(conn: H2UpstreamConnection, limit: float) -> None:
        backend = conn.backend
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit):
                await loop.create_connection(
                    lambda: cast(asyncio.Protocol, conn), backend.host, backend.port
                )
        except BaseException:
            conn._gone()
            raise

    async def _wait(self, client: ClientProtocol, ex: Exchange, conn: H2UpstreamConnection) -> None:
        backend = conn.backend
        ready = conn.ready
        assert ready is not None
        try:
            await asyncio.shield(ready)
        except (OSError, TimeoutError) as exc:
            conn.reserved -= 1
            ex.connect_task = None
            if ex.finished:
                return
            backend.record_failure()
            timeout = isinstance(exc, TimeoutError)
            client._fail_upstream(
                ex,
                504 if timeout else 502,
                "connecting to the backend timed out"
                if timeout
                else "the backend refused the connection",
                retry=True,
            )
            return
        except asyncio.CancelledError:
            conn.reserved -= 1
            conn._touch()
            raise
        conn.reserved -= 1
        ex.connect_task = None
        if ex.finished or client.closing or conn.closed:
            conn._touch()
            if not ex.finished and not client.closing:
                client._fail_upstream(ex, 502, "the backend closed the connection", retry=True)
            return
        self._attach(client, ex, conn)

    @staticmethod
    def _attach(client: ClientProtocol, ex: Exchange, conn: H2UpstreamConnection) -> None:
        conn.reserved += 1  # until the stream's head is read (open_stream)
        if conn.idle_handle is not None:
            conn.idle_handle.cancel()
            conn.idle_handle = None
        client._attach(ex, H2UpstreamStream(conn, client.proxy.flusher))

    def close_all(self) -> None:
        for conns in list(self.by_backend.values()):
            for conn in list(conns):
                conn.close()


UPSTREAMS = H2Upstreams()


def assign(client: ClientProtocol, ex: Exchange, backend: Backend) -> None:
    """The core's hook: ``ex`` goes to ``backend`` (whose ``protocol`` is ``"h2c"``) over h2c."""
    UPSTREAMS.assign(client, ex, backend)
