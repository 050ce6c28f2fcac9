"""HTTP/2 on the client side of the proxy, on the sans-io ``h2`` library.

``H2Connection`` is the protocol of one HTTP/2 connection (TLS with ALPN ``h2``, or h2c with
prior knowledge): it owns framing, SETTINGS, flow control, GOAWAY and the per-connection
limits (``h2_rules.H2Limits``). Each stream is one ``h2_stream.H2Stream``, an exchange of the
core's client protocol (routed, policed and forwarded as an HTTP/1.1 request is).

Output is sent once per event-loop iteration: what the streams have to send waits in them
until the proxy's flusher calls ``flush``, which gives each its DATA frames as the windows
allow (a response's last piece carries END_STREAM) and writes all of h2's output at once.
Flow control both ways: request DATA is acknowledged (WINDOW_UPDATE) only while the backend
takes it; response bytes wait in the stream while the client's window is shut, and past
``buffer_limit`` the backend connection stops being read until the window opens.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import structlog
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame
from mypy_extensions import mypyc_attr

from zeitwork.proxy.client import ClientProtocol
from zeitwork.proxy.config import DEADLINE_IDLE, DEADLINE_STREAM
from zeitwork.proxy.engine import Proxy
from zeitwork.proxy.h2_hpack import HeaderEncoder
from zeitwork.proxy.h2_rules import H2Limits, H2RequestError, ResetBudget, request_fields
from zeitwork.proxy.h2_stream import H2Stream
from zeitwork.proxy.headers import forwarded_node
from zeitwork.proxy.types import Headers

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_log = structlog.get_logger("zeitwork.proxy")

_S = h2.settings.SettingCodes
_H2_ERRORS = (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError)


def _h2_config() -> h2.config.H2Configuration:
    """h2's checks and rewriting of header fields are off both ways: ``request_fields``
    checks what comes in (answering a bad stream 400 where h2 would end the connection) and
    joins cookies; ``response_headers`` lower-cases and strips what goes out and drops the
    connection-specific fields; ``HeaderEncoder`` never indexes a field."""
    return h2.config.H2Configuration(
        client_side=False,
        header_encoding=None,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )


@mypyc_attr(allow_interpreted_subclasses=True)
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
        self.sending: list[H2Stream] = []  # streams with something to send at the flush
        self.window_moved = False  # the connection's window opened: every stream's turn
        self.queued = False  # in the proxy's flusher for this iteration

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
        self.for_node = forwarded_node(self.peer_ip, self.peer_port)
        limits = self.limits
        conn = h2.connection.H2Connection(config=_h2_config())
        encoder: Any = HeaderEncoder()
        conn.encoder = encoder
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
        self._drop_streams()
        self.h2 = None
        super().connection_lost(exc)

    def _drop_streams(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        self.sending = []
        for stream in streams:
            stream.gone()

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
        self._pump_scheduled()  # what is ready goes first (h2 as a client reads no frame
        self._send()  # after a GOAWAY)
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
        self._drop_streams()
        super().close()

    def eof_received(self) -> bool | None:
        return None  # the client's end of input ends the connection

    def on_deadline(self) -> None:
        if self.deadline_kind == DEADLINE_STREAM and self.streams:
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
            self.deadline_kind = DEADLINE_STREAM
        else:
            self.deadline = proxy.now() + proxy.config.idle_timeout
            self.deadline_kind = DEADLINE_IDLE

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
        # what h2 answered (SETTINGS and PING ACKs, WINDOW_UPDATE, RST_STREAM) is queued now,
        # so that a flood of them makes the socket push back within this read; the streams'
        # DATA waits for the flush
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
                self.window_moved = True
                self._kick()
            else:
                stream = self.streams.get(event.stream_id)
                if stream is not None and not stream.scheduled:
                    self.schedule(stream)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.window_moved = True
            self._kick()
        elif isinstance(event, h2.events.StreamReset):
            self._on_reset(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._drop_streams()
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
        stream = H2Stream(self, self, sid, self.limits.buffer_limit)
        self.streams[sid] = stream
        self._rearm()
        ended = event.stream_ended is not None
        # known before the request starts: a local answer (429, 308, ...) may end the stream
        stream.request_ended = ended
        fields = cast(Headers, list(event.headers or ()))  # bytes: header_encoding=None
        try:
            request = request_fields(fields, has_body=not ended)
        except H2RequestError as exc:
            stream._headers = [f for f in fields if f[0][:1] != b":"]  # the page's Accept
            stream._send_error(exc.status, exc.detail, close=False)
        else:
            stream.begin(request)
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
        """h2's output queued now (before a frame written by hand: the order is kept)."""
        conn = self.h2
        if conn is None:
            return
        data = conn.data_to_send()
        if data:
            self._write(data)

    def _kick(self) -> None:
        """Have ``flush`` run at the end of this event-loop iteration."""
        if not self.queued and self.transport is not None:
            self.queued = True
            self.proxy.flusher.add_client(self)

    def schedule(self, stream: H2Stream) -> None:
        """``stream`` has DATA (or its end) to send: at the flush."""
        stream.scheduled = True
        self.sending.append(stream)
        self._kick()

    def flush(self) -> None:
        self.queued = False
        conn = self.h2
        if conn is not None:
            self._pump_scheduled()
            data = conn.data_to_send()
            if data:
                self.out.append(data)
                self.out_bytes += len(data)
        super().flush()

    def _pump_scheduled(self) -> None:
        if self.window_moved:
            self.window_moved = False
            self.pump_all()
        sending, self.sending = self.sending, []
        for stream in sending:
            stream.scheduled = False
            self.pump(stream)

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
        self._kick()

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
        self._kick()
        if end:
            stream.response_sent = True
            stream.pending.clear()
            stream.pending_bytes = 0
            self._maybe_done(stream)

    def send_continue(self, stream: H2Stream) -> None:
        conn = self.h2
        if conn is None or stream.response_sent:
            return
        # already closed on h2's side: nothing to tell
        with contextlib.suppress(*_H2_ERRORS):
            conn.send_headers(stream.stream_id, [(b":status", b"100")])
        self._kick()

    def pump(self, stream: H2Stream, frames: int = -1) -> bool:
        """Send what the windows allow of ``stream``'s response (at most ``frames`` DATA
        frames; -1: no bound), ending the stream with its last piece once the response is
        over. True if some frame left."""
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
                    pending.popleft()
                    stream.pending_bytes -= len(chunk)
                    last = not pending and stream.end_pending and not stream.trailers
                    conn.send_data(sid, chunk, end_stream=last)
                    if last:
                        stream.response_sent = True
                sent = True
                frames -= 1
            if not pending and stream.end_pending and not stream.response_sent:
                if stream.trailers:  # the backend's chunked trailers end the stream
                    conn.send_headers(sid, stream.trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                stream.response_sent = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.gone()
            self.reset(stream, ErrorCodes.INTERNAL_ERROR)
            return sent
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
            with contextlib.suppress(*_H2_ERRORS):
                conn.reset_stream(stream.stream_id, code)
            self._kick()
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
        """Take ``stream`` out of the table."""
        return self.streams.pop(stream.stream_id, None) is not None

    def _after_stream(self) -> None:
        if self.goaway_at and not self.streams:
            super().close()
            return
        self._rearm()
