"""HTTP/2 on the client side of the proxy, on the sans-io ``h2`` library.

``H2Connection`` is the protocol of one HTTP/2 connection (TLS with ALPN ``h2``, or h2c with
prior knowledge): it owns framing, SETTINGS, flow control, GOAWAY and the per-connection
limits (``h2_rules.H2Limits``). Each stream is one ``H2Stream``: the core's HTTP/1.1 client
protocol fed the stream's request as an HTTP/1.1 head (``h2_rules.request_head``), so a stream
is routed, rate-limited and policed (``RequestPolicy``), given its forwarding headers and sent
over the backends' HTTP/1.1 keep-alive pools exactly as an HTTP/1.1 request is; only the way
back differs: the response becomes HEADERS and DATA frames sent as the client's windows allow.

Flow control both ways: request DATA is acknowledged (WINDOW_UPDATE) only while the backend
takes it; response bytes wait in the stream while the client's window is shut, and past
``buffer_limit`` the backend connection stops being read until the window opens.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httptools
import structlog
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from zeitwork.proxy.h2_rules import (
    H2Limits,
    H2RequestError,
    ResetBudget,
    request_head,
    response_headers,
)
from zeitwork.proxy.server import (
    _CONTINUE,
    _D_IDLE,
    _D_STREAM,
    _NO_PARSER,
    ClientProtocol,
    Exchange,
    Proxy,
)
from zeitwork.proxy.types import Headers, LocalResponse
from zeitwork.proxy.upstream import UpstreamProtocol

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_log = structlog.get_logger("zeitwork.proxy")

_S = h2.settings.SettingCodes


class H2Stream(ClientProtocol):
    """One stream: an exchange of the core's client protocol whose answer goes to ``conn``."""

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        super().__init__(conn.proxy, tls=conn.tls)
        self.conn = conn
        self.stream_id = stream_id
        self.peer_ip = conn.peer_ip
        self.peer_port = conn.peer_port
        self.trusted_peer = conn.trusted_peer
        self.peer_b = conn.peer_b
        self.client_b = conn.client_b
        self.scheme = conn.scheme
        self.info = conn.info
        self.sni = conn.sni
        self.for_node = conn.for_node
        self.refused = conn.refused
        self.chunked = False
        self.request_ended = False
        # response body bytes the client's window does not take yet
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.end_pending = False  # the response ends once ``pending`` is sent
        self.response_sent = False
        self.unacked = 0  # request bytes not acknowledged while the backend is paused
        self.upstream_paused = False
        # the upstream parser appends trailer fields to its head's list: they start here
        self.head_fields = 0
        self.trailers: Headers = []

    # -- the request side: DATA becomes the HTTP/1.1 body ----------------------------------
    def feed_body(self, data: bytes, flow: int) -> None:
        if self.chunked and data:
            self.data_received(b"%x\r\n%s\r\n" % (len(data), data))
        elif data:
            self.data_received(data)
        if self.paused:
            self.unacked += flow
        else:
            self.conn.acknowledge(self, flow)

    def end_request(self) -> None:
        self.request_ended = True
        if self.chunked:
            self.data_received(b"0\r\n\r\n")

    def pause_reading_for(self, reason: int) -> None:
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.unacked:
            flow, self.unacked = self.unacked, 0
            self.conn.acknowledge(self, flow)

    # -- the response side -----------------------------------------------------------------
    def upstream_head(self, ex: Exchange, up: UpstreamProtocol, status: int) -> bool:
        if ex is not self.ex or ex.finished:
            return False
        if status == 101:  # no upgrade is ever asked for over HTTP/2
            raise httptools.HttpParserError("unexpected 101 from the backend")
        proxy = self.proxy
        headers = response_headers(up.headers)
        if proxy.config.response_request_id and not any(n == b"x-request-id" for n, _ in headers):
            headers.append((b"x-request-id", ex.request_id))
        if proxy.has_policy:
            proxy.policy.on_response(ex.head, ex.client, status, headers)
        ex.response_started = True
        ex.status = status
        self.head_fields = len(up.headers)
        no_body = ex.head_only or status in (204, 304)
        self.conn.send_head(self, status, headers, end=no_body)
        return ex.head_only

    def upstream_body(self, ex: Exchange, body: bytes) -> None:
        if ex is not self.ex or ex.head_only or self.response_sent:
            return
        ex.sent += len(body)
        self.pending.append(body)
        self.pending_bytes += len(body)
        self.conn.pump(self)
        up = ex.upstream
        if (
            self.pending_bytes > self.conn.limits.buffer_limit
            and up is not None
            and up.transport is not None
        ):
            self.upstream_paused = True
            up.transport.pause_reading()

    def upstream_complete(self, ex: Exchange, up: UpstreamProtocol, keep_alive: bool) -> None:
        if ex is self.ex and not ex.finished and len(up.headers) > self.head_fields:
            self.trailers = response_headers(up.headers[self.head_fields :])
        super().upstream_complete(ex, up, keep_alive)

    def window_opened(self) -> None:
        """Called by the connection after sending: the backend may be read again."""
        ex = self.ex
        if self.upstream_paused and self.pending_bytes <= self.conn.limits.buffer_limit // 2:
            self.upstream_paused = False
            up = ex.upstream if ex is not None else None
            if up is not None and up.transport is not None and not up.closed:
                up.transport.resume_reading()

    def _finish(self, ex: Exchange) -> None:
        ex.finished = True
        self._release_backend(ex, status=ex.status)
        self.ex = None
        ex.body_buf = []
        self.upstream_paused = False
        self.end_pending = True
        self.conn.pump(self)

    def _send_local(self, ex: Exchange, local: LocalResponse) -> None:
        headers = list(local.headers)
        if self.proxy.config.response_request_id:
            headers.append((b"x-request-id", ex.request_id))
        self.proxy.policy.on_response(ex.head, ex.client, local.status, headers)
        ex.status = local.status
        self._answer(local.status, headers, b"" if ex.head_only else local.body)
        self._finish(ex)

    def _send_error(self, status: int, detail: str, *, close: bool) -> None:
        """The request head or body broke a rule of the core's parser (400, 413, 431...)."""
        content_type, body = self.render_error(status, detail, self._headers)
        headers: Headers = [(b"content-type", content_type)]
        if status in (429, 503):
            headers.append((b"retry-after", b"%d" % self.proxy.config.retry_after))
        self._answer(status, headers, body)
        self.proxy.observer.request_done("-", "-", status, 0.0, 0, 0)
        self.end_pending = True
        self.conn.pump(self)

    def _answer(self, status: int, headers: Headers, body: bytes) -> None:
        if self.response_sent or self.conn.h2 is None:
            return
        headers.append((b"content-length", b"%d" % len(body)))
        self.conn.send_head(self, status, headers, end=not body)
        if body:
            self.pending.append(body)
            self.pending_bytes += len(body)

    def render_error(self, status: int, detail: str, headers: Headers) -> tuple[bytes, bytes]:
        return self.conn.render_error(status, detail, headers)

    def _write(self, data: bytes) -> None:
        """The core writes here only its ``100 Continue`` (the rest is overridden): over
        HTTP/2 that is an informational HEADERS frame."""
        if data == _CONTINUE:
            self.conn.send_continue(self)

    def abort(self) -> None:
        """The exchange failed after its response began: the stream is reset."""
        ex = self.ex
        if ex is not None and not ex.finished:
            self._abandon(ex)
        self.ex = None
        self.conn.reset(self, ErrorCodes.INTERNAL_ERROR)

    def close(self) -> None:
        return None

    def linger_close(self) -> None:
        return None

    def gone(self) -> None:
        """The client reset the stream, or the connection ended: drop the backend side."""
        self.parser = _NO_PARSER  # its callbacks refer back here: no cycle left
        self.response_sent = True
        self.pending.clear()
        self.pending_bytes = 0
        ex = self.ex
        self.ex = None
        if ex is not None and not ex.finished:
            self._abandon(ex)


class H2Connection(ClientProtocol):
    """One HTTP/2 client connection (an asyncio protocol, as ``ClientProtocol``)."""

    def __init__(self, proxy: Proxy, *, tls: bool, limits: H2Limits) -> None:
        super().__init__(proxy, tls=tls)
        self.limits = limits
        self.h2: h2.connection.H2Connection | None = None
        self.streams: dict[int, H2Stream] = {}
        self.resets = ResetBudget(limit=limits.max_resets, interval=limits.reset_interval)
        self.goaway_at = 0  # the last stream id of our GOAWAY (0: none sent)
        self.write_paused = False
        self.last_served = 0  # the stream pump_all gave a frame to last

    def take_over(self, other: ClientProtocol) -> None:
        """Become the protocol of ``other``'s connection before its handshake completes (the
        TLS layer chose h2 by ALPN): its admission under the caps carries over."""
        self.forced_peer = other.forced_peer
        self.preadmitted = other.preadmitted
        self.refused = other.refused
        self.sni = other.sni

    # -- lifecycle ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.admitted:
            return
        limits = self.limits
        conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                # request_head checks the fields and answers a stream 400 instead
                validate_inbound_headers=False,
            )
        )
        advertised = {
            _S.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            _S.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            _S.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            _S.ENABLE_PUSH: 0,
        }
        conn.local_settings = h2.settings.Settings(client=False, initial_values=advertised)
        conn.initiate_connection()
        # the refusal (REFUSED_STREAM) is this class's; h2 ends the connection only past
        # twice the advertised number
        enforced = dict(advertised)
        enforced[_S.MAX_CONCURRENT_STREAMS] = 2 * limits.max_concurrent_streams
        conn.local_settings = h2.settings.Settings(client=False, initial_values=enforced)
        conn.decoder.max_header_list_size = limits.max_header_list_size
        grow = limits.connection_window - 65535
        if grow > 0:
            conn.increment_flow_control_window(grow)
        self.h2 = conn
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.gone()
        self.h2 = None
        super().connection_lost(exc)

    def close(self) -> None:
        """Graceful: GOAWAY naming the last stream taken, close once those are answered."""
        if self.h2 is not None and not self.goaway_at:
            self._goaway(ErrorCodes.NO_ERROR)
        if not self.streams:
            super().close()

    def _goaway(self, code: int) -> None:
        conn = self.h2
        if conn is None:
            return
        self._send()
        frame = GoAwayFrame(0)
        frame.last_stream_id = conn.highest_inbound_stream_id
        frame.error_code = code
        self.goaway_at = max(1, conn.highest_inbound_stream_id)
        self._write(frame.serialize())

    def _fatal(self, code: int, event: str) -> None:
        """A connection error (ours or h2's): GOAWAY, reset what is open, close."""
        _log.warning(event, peer=self.peer_ip, streams=len(self.streams))
        conn = self.h2
        if conn is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # h2 ended it already
                conn.close_connection(code)
            self._send()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.gone()
        super().close()

    def eof_received(self) -> bool | None:
        return None  # the client's end of input ends the connection

    def on_deadline(self) -> None:
        if self.deadline_kind == _D_STREAM and self.streams:
            _log.warning(
                "proxy.h2_stalled",
                peer=self.peer_ip,
                streams=len(self.streams),
                timeout=self.proxy.config.stream_idle_timeout,
            )
            for stream in list(self.streams.values()):
                ex = stream.ex
                if ex is not None and not ex.response_started and not ex.finished:
                    stream._fail_upstream(
                        ex, 504, "the backend did not answer in time", retry=False
                    )
                else:
                    stream.abort()
            self._rearm()
            return
        super().on_deadline()  # idle (close: GOAWAY), linger (abort)

    def _rearm(self) -> None:
        proxy = self.proxy
        if self.streams:
            self.deadline = proxy.now() + proxy.config.stream_idle_timeout
            self.deadline_kind = _D_STREAM
        else:
            self.deadline = proxy.now() + proxy.config.idle_timeout
            self.deadline_kind = _D_IDLE

    # -- back-pressure from the client's socket ----------------------------------------------
    def pause_writing(self) -> None:
        self.write_paused = True
        # nor is the client read while its socket takes nothing: what it sends may need an
        # answer (PING, SETTINGS), and a client that floods without reading must not make
        # the edge buffer those answers without end
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()
        for stream in self.streams.values():
            ex = stream.ex
            up = ex.upstream if ex is not None else None
            if up is not None and up.transport is not None:
                up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.active = True
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()
        for stream in list(self.streams.values()):
            ex = stream.ex
            up = ex.upstream if ex is not None else None
            if stream.upstream_paused or up is None or up.closed:
                continue
            if up.transport is not None:
                up.transport.resume_reading()

    # -- input ------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.active = True
        conn = self.h2
        if conn is None or self.closing:
            return
        try:
            events = conn.receive_data(data)
        except h2.exceptions.DenialOfServiceError:
            self._fatal(ErrorCodes.ENHANCE_YOUR_CALM, "proxy.h2_refused_headers")
            return
        except h2.exceptions.ProtocolError:
            self._fatal(ErrorCodes.PROTOCOL_ERROR, "proxy.h2_protocol_error")
            return
        for event in events:
            if self.h2 is None or self.closing:
                return
            self._on_event(event)
        self._send()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            flow = event.flow_controlled_length
            if stream is None:
                self.acknowledge(None, flow)
                return
            stream.feed_body(event.data, flow)
            if event.stream_ended is not None:
                self._request_ended(stream)
        elif isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.request_ended:
                self._request_ended(stream)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)  # request trailers are not forwarded
            if stream is not None and event.stream_ended is not None:
                self._request_ended(stream)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                self.pump_all()
            else:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    self.pump(stream)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.pump_all()
        elif isinstance(event, h2.events.StreamReset):
            self._on_reset(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            streams = list(self.streams.values())
            self.streams.clear()
            for stream in streams:
                stream.gone()
            super().close()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        conn = self.h2
        assert conn is not None
        sid = event.stream_id
        if (self.goaway_at and sid > self.goaway_at) or (
            len(self.streams) >= self.limits.max_concurrent_streams
        ):
            conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        stream = H2Stream(self, sid)
        self.streams[sid] = stream
        self._rearm()
        ended = event.stream_ended is not None
        # known before the head is fed: a local answer (429, 308, ...) may end the stream in it
        stream.request_ended = ended
        fields = cast(Headers, list(event.headers or ()))  # bytes: header_encoding=None
        try:
            request = request_head(fields, has_body=not ended)
        except H2RequestError as exc:
            stream._headers = [f for f in fields if f[0][:1] != b":"]  # the page's Accept
            stream._send_error(exc.status, exc.detail, close=False)
        else:
            stream.chunked = request.chunked  # never with ``ended``: no body follows
            stream.data_received(request.head)
        if self.refused:  # over the caps: this stream got its 503, the connection ends
            self.close()

    def _request_ended(self, stream: H2Stream) -> None:
        stream.end_request()
        self._maybe_done(stream)

    def _on_reset(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.gone()
        if not self.resets.hit(self.proxy.now()):
            self._fatal(ErrorCodes.ENHANCE_YOUR_CALM, "proxy.h2_rapid_reset")
            return
        self._after_stream()

    # -- output -----------------------------------------------------------------------------
    def _send(self) -> None:
        conn = self.h2
        if conn is None:
            return
        data = conn.data_to_send()
        if data:
            self._write(data)

    def acknowledge(self, stream: H2Stream | None, flow: int) -> None:
        conn = self.h2
        if conn is None or not flow:
            return
        sid = stream.stream_id if stream is not None else 0
        try:
            conn.acknowledge_received_data(flow, sid)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            if sid:  # the stream is over: the connection's window still takes it back
                conn.acknowledge_received_data(flow, 0)
        self._send()

    def send_head(self, stream: H2Stream, status: int, headers: Headers, *, end: bool) -> None:
        conn = self.h2
        if conn is None or stream.response_sent:
            return
        self.active = True
        try:
            conn.send_headers(
                stream.stream_id, [(b":status", b"%d" % status), *headers], end_stream=end
            )
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.gone()
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return
        if end:
            stream.response_sent = True
            stream.pending.clear()
            stream.pending_bytes = 0
        self._send()
        if end:
            self._maybe_done(stream)

    def send_continue(self, stream: H2Stream) -> None:
        conn = self.h2
        if conn is None or stream.response_sent:
            return
        # already closed on h2's side: nothing to tell
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            conn.send_headers(stream.stream_id, [(b":status", b"100")])
        self._send()

    def pump(self, stream: H2Stream, frames: int = -1) -> bool:
        """Send what the windows allow of ``stream``'s response (at most ``frames`` DATA
        frames; -1: no bound), and its end once all is sent. True if some frame left."""
        conn = self.h2
        if conn is None or stream.response_sent:
            return False
        self.active = True
        sid = stream.stream_id
        pending = stream.pending
        sent = False
        try:
            while pending and frames != 0:
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = pending[0]
                if len(chunk) > window:
                    conn.send_data(sid, chunk[:window])
                    pending[0] = chunk[window:]
                    stream.pending_bytes -= window
                else:
                    conn.send_data(sid, chunk)
                    pending.popleft()
                    stream.pending_bytes -= len(chunk)
                sent = True
                frames -= 1
            if not pending and stream.end_pending:
                if stream.trailers:  # the backend's chunked trailers end the stream
                    conn.send_headers(sid, stream.trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                stream.response_sent = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.gone()
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return sent
        self._send()
        if stream.response_sent:
            self._maybe_done(stream)
        else:
            stream.window_opened()
        return sent

    def pump_all(self) -> None:
        """The connection's window opened: every waiting stream gets a frame in turn."""
        conn = self.h2
        while conn is not None and conn.outbound_flow_control_window > 0:
            moved = False
            waiting = [s for s in self.streams.values() if s.pending or s.end_pending]
            # the turn goes on after the stream served last, so that a window smaller than
            # one frame per stream does not keep going to the same first few
            later = [s for s in waiting if s.stream_id > self.last_served]
            for stream in later + [s for s in waiting if s.stream_id <= self.last_served]:
                if conn.outbound_flow_control_window <= 0:
                    return
                if self.pump(stream, 1):
                    moved = True
                    self.last_served = stream.stream_id
            if not moved:
                return

    def reset(self, stream: H2Stream, code: int) -> None:
        conn = self.h2
        self._forget(stream)
        stream.response_sent = True
        if conn is not None:
            # already closed on h2's side: nothing to reset
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                conn.reset_stream(stream.stream_id, code)
            self._send()
        self._after_stream()

    def _maybe_done(self, stream: H2Stream) -> None:
        """A stream whose response is sent is over; one whose client still sends a body the
        backend no longer reads is reset with NO_ERROR (RFC 9113 8.1)."""
        if not stream.response_sent:
            return
        if not stream.request_ended:
            if stream.ex is None:
                self.reset(stream, ErrorCodes.NO_ERROR)
            return
        if self._forget(stream):
            self._after_stream()

    def _forget(self, stream: H2Stream) -> bool:
        """Take ``stream`` out of the table; its parser's cycle back to it is broken."""
        if self.streams.pop(stream.stream_id, None) is None:
            return False
        stream.parser = _NO_PARSER
        return True

    def _after_stream(self) -> None:
        if self.goaway_at and not self.streams:
            super().close()
            return
        self._rearm()
