"""h2c (HTTP/2 over cleartext, prior knowledge) to a backend, on the sans-io ``h2`` library.

A backend whose ``protocol`` is ``"h2c"`` (a release deployed with ``backend_protocol:
h2c``, e.g. a gRPC server) is reached here instead of over HTTP/1.1 keep-alive. The core's
client protocols stay as they are: each exchange gets an ``H2UpstreamStream``
(``h2c_stream``), an ``UpstreamProtocol`` to them, which reads the HTTP/1.1 request the core
writes to it (``httptools``) and sends it as one HTTP/2 stream; the stream's response comes
back through the same calls an HTTP/1.1 backend's does (``upstream_head``, ``upstream_body``,
``upstream_complete``), its trailers kept: appended to ``headers`` as the HTTP/1.1 parser
appends chunked trailers (an HTTP/2 client of the edge gets them as a trailing HEADERS frame),
and written in the last chunk for an HTTP/1.1 client (``last_chunk``: the load balancer to the
edge). ``docs/http2.md`` says why the edge to load balancer hop stays HTTP/1.1.

Here: the connections (``H2UpstreamConnection``: frames, windows, GOAWAY) and the process's
pool of them (``H2Upstreams``). Streams share connections: at most ``MAX_STREAMS`` per
connection (or the backend's SETTINGS_MAX_CONCURRENT_STREAMS, if lower), a new connection past
that. Flow control both ways: request bytes wait in the stream while the backend's window is
shut, and past ``h2c_stream.BUFFER_LIMIT`` the client is no longer read; response DATA is
acknowledged (WINDOW_UPDATE) only as the client takes it: while the core has paused the
stream's "transport" (a slow client), DATA waits unacknowledged, so the backend's window
closes. A stream the backend refuses (REFUSED_STREAM, or above its GOAWAY's last stream) is
retried as a stale keep-alive connection is; a reset after the response began is a truncated
response (the client's stream is reset, or its HTTP/1.1 connection closed). A GOAWAY from the
backend (``_ClientH2Connection``) takes no new stream; the streams it still serves run to
their end, and the connection closes after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import structlog
from h2.errors import ErrorCodes

from zeitwork.proxy.connection import Connection
from zeitwork.proxy.h2c_stream import H2UpstreamStream
from zeitwork.proxy.state import Exchange

if TYPE_CHECKING:
    from hyperframe.frame import Frame, GoAwayFrame  # h2's framing library

    from zeitwork.proxy.backends import Backend

_log = structlog.get_logger("zeitwork.proxy")
_S = h2.settings.SettingCodes

H2C = "h2c"
HTTP1 = "http1"
MAX_STREAMS = 100  # per connection, at most (the backend may allow fewer)
STREAM_WINDOW = 1024 * 1024  # our receive window per stream
CONNECTION_WINDOW = 16 * 1024 * 1024
IDLE_CLOSE = 60.0  # a connection with no stream for this long is closed


class _ClientH2Connection(h2.connection.H2Connection):
    """``h2``'s connection, except for a GOAWAY from the backend.

    h2 4.x moves its state machine to CLOSED on a received GOAWAY, after which every frame is
    a protocol error (the DATA and trailers of streams the backend still serves, the PING a
    gRPC server sends with its graceful GOAWAY), and it drops what was queued to send (window
    updates, request DATA of those streams). RFC 9113 6.8: streams up to the GOAWAY's last
    stream id may still complete. Here the GOAWAY is reported (``ConnectionTerminated``) and
    the state is left as it was: the connection refuses new streams itself
    (``H2UpstreamConnection.goaway``) and closes once its last stream ends.
    """

    def _receive_goaway_frame(
        self, frame: GoAwayFrame
    ) -> tuple[list[Frame], list[h2.events.Event]]:
        if self.state_machine.state is h2.connection.ConnectionState.CLOSED:
            return super()._receive_goaway_frame(frame)  # we are closing already
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2UpstreamConnection:
    """One h2c connection to a backend (an asyncio protocol by duck typing)."""

    def __init__(self, backend: Backend, upstreams: H2Upstreams) -> None:
        self.backend = backend
        self.upstreams = upstreams
        self.transport: asyncio.Transport | None = None
        self.h2 = _ClientH2Connection(
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
            _log.warning(
                "proxy.h2c_backend_protocol_error", backend=self.backend.address, error=str(exc)
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
            # the backend's GOAWAY: no new stream here (``capacity`` is 0, the next exchange
            # gets a new connection); the streams it processes (ids up to ``last``) run to
            # their end, and the connection closes after the last (``forget``). A server may
            # send two (gRPC: the first with the highest id and a PING, then the real one).
            self.goaway = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for sid, stream in list(streams.items()):
                if sid > last:  # never processed: safe to retry
                    stream.on_reset(refused=True)
            _log.info(
                "proxy.h2c_backend_goaway",
                backend=self.backend.address,
                error_code=int(event.error_code or 0),
                last_stream_id=last,
                streams=len(self.streams),
            )
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

    def assign(self, client: Connection, ex: Exchange, backend: Backend) -> None:
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

    async def _wait(self, client: Connection, ex: Exchange, conn: H2UpstreamConnection) -> None:
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
    def _attach(client: Connection, ex: Exchange, conn: H2UpstreamConnection) -> None:
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


def assign(client: Connection, ex: Exchange, backend: Backend) -> None:
    """The core's hook: ``ex`` goes to ``backend`` (whose ``protocol`` is ``"h2c"``) over h2c."""
    UPSTREAMS.assign(client, ex, backend)
