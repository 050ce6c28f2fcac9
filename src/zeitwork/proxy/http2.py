"""HTTP/2 on the client side of the proxy, on ``ngh2`` (libnghttp2, sans-io).

``H2Connection`` is the protocol of one HTTP/2 connection (TLS with ALPN ``h2``, or h2c with
prior knowledge): it owns framing, SETTINGS, flow control, GOAWAY and the per-connection
limits (``h2_rules.H2Limits``). Each stream is one ``h2_stream.H2Stream``, an exchange of the
core's client protocol (routed, policed and forwarded as an HTTP/1.1 request is).

libnghttp2 parses the frames, keeps the streams' states, decodes HPACK under the header-list
limit, answers SETTINGS and PING and refuses streams past the advertised limit
(REFUSED_STREAM); its HPACK encoder here has no dynamic table (nothing a response carries,
a session cookie or a token, enters a compression context). ``h2_rules.request_fields``
still checks each request's fields, so a bad stream gets the core's 400 where it would
otherwise be a reset, and this class counts the client's resets (CVE-2023-44487).

Output is sent once per event-loop iteration: what the streams have to send waits in them
until the proxy's flusher calls ``flush``, which hands libnghttp2 as much of each stream's
DATA as the windows allow (a response's last piece carries END_STREAM) and writes all of its
output at once. Flow control both ways: request DATA is acknowledged (WINDOW_UPDATE) only
while the backend takes it; response bytes wait in the stream while the client's window is
shut, and past ``buffer_limit`` the backend connection stops being read until it opens.
"""

from __future__ import annotations

import asyncio
import contextlib

import ngh2
import structlog
from hyperframe.frame import GoAwayFrame
from mypy_extensions import mypyc_attr
from ngh2 import ErrorCode, Setting

from zeitwork.proxy.client import ClientProtocol
from zeitwork.proxy.config import DEADLINE_IDLE, DEADLINE_STREAM
from zeitwork.proxy.engine import Proxy
from zeitwork.proxy.h2_rules import H2Limits, H2RequestError, ResetBudget, request_fields
from zeitwork.proxy.h2_stream import H2Stream
from zeitwork.proxy.headers import forwarded_node
from zeitwork.proxy.types import Headers

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# PING and SETTINGS acknowledgements libnghttp2 may hold at once before it ends the
# connection as flooded: far above what one socket read can carry (a 256 KiB read is ~15,000
# PINGs), since its output leaves after every read and the socket's back-pressure is what
# stops a client that sends without reading (``pause_writing``)
_MAX_OUTBOUND_ACK = 100_000

_log = structlog.get_logger("zeitwork.proxy")

_RequestReceived = ngh2.RequestReceived
_DataReceived = ngh2.DataReceived
_TrailersReceived = ngh2.TrailersReceived
_WindowUpdated = ngh2.WindowUpdated
_StreamReset = ngh2.StreamReset
_StreamClosed = ngh2.StreamClosed
_SettingsReceived = ngh2.SettingsReceived
_GoAwayReceived = ngh2.GoAwayReceived
_ConnectionClosed = ngh2.ConnectionClosed


def _config(limits: H2Limits) -> ngh2.Configuration:
    """WINDOW_UPDATE only as the streams take request bytes; the decoded header list capped
    at the advertised size (past it libnghttp2 gives up on the connection: an HPACK bomb);
    no dynamic table for the responses' fields."""
    return ngh2.Configuration(
        auto_window_update=False,
        max_inbound_header_list_size=limits.max_header_list_size,
        max_deflate_dynamic_table_size=0,
        max_outbound_ack=_MAX_OUTBOUND_ACK,
    )


@mypyc_attr(allow_interpreted_subclasses=True)
class H2Connection(ClientProtocol):
    """One HTTP/2 client connection (an asyncio protocol, as ``ClientProtocol``)."""

    def __init__(self, proxy: Proxy, *, tls: bool, limits: H2Limits) -> None:
        super().__init__(proxy, tls=tls)
        self.limits = limits
        self.h2: ngh2.Connection | None = None
        self.streams: dict[int, H2Stream] = {}
        self.resets = ResetBudget(limit=limits.max_resets, interval=limits.reset_interval)
        self.goaway_at = 0  # the last stream id of our GOAWAY (0: none sent)
        self.highest = 0  # the highest stream id the client opened
        self.frame_size = 16384  # the client's SETTINGS_MAX_FRAME_SIZE
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
        conn = ngh2.Connection(ngh2.Role.SERVER, _config(limits))
        conn.initiate_connection(
            {
                Setting.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                Setting.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                Setting.INITIAL_WINDOW_SIZE: limits.initial_window_size,
                Setting.ENABLE_PUSH: 0,
            }
        )
        if limits.connection_window > 65535:
            conn.set_local_window_size(limits.connection_window)
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
            self._goaway(ErrorCode.NO_ERROR)
        if not self.streams:
            super().close()

    def _goaway(self, code: int) -> None:
        conn = self.h2
        if conn is None:
            return
        # what is ready goes out first: libnghttp2 would put the GOAWAY before queued DATA,
        # and some clients (the ``h2`` library) read no frame after a GOAWAY
        self._pump_scheduled()
        self.goaway_at = max(1, self.highest)
        try:
            self._send()
            conn.send_goaway(code, last_stream_id=self.highest)
        except ngh2.NGH2Error:  # libnghttp2 is ending the connection already
            return
        self._send()

    def _fatal(self, code: int, event: str) -> None:
        """A connection error of ours: GOAWAY, reset what is open, close."""
        _log.warning(event, peer=self.peer_ip, streams=len(self.streams))
        conn = self.h2
        if conn is not None:
            with contextlib.suppress(ngh2.NGH2Error):  # ended already
                conn.terminate_connection(code, last_stream_id=self.highest)
            with contextlib.suppress(ngh2.NGH2Error):
                self._send()
        self.h2 = None  # terminating: libnghttp2 takes no more calls
        self._drop_streams()
        super().close()

    def _broken(self, code: int, event: str) -> None:
        """libnghttp2 gave up on the connection (an error in what the client sent, a limit
        passed): its state is unusable, so the GOAWAY is written here."""
        _log.warning(event, peer=self.peer_ip, streams=len(self.streams))
        self.h2 = None
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.highest
        frame.error_code = code
        self._write(frame.serialize())
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
            conn.receive_data(data)
            events = conn.events()
        except ngh2.DenialOfServiceError:  # a header list past the limit, a flood
            self._broken(ErrorCode.ENHANCE_YOUR_CALM, "proxy.h2_refused_headers")
            return
        except ngh2.NGH2Error:
            self._broken(ErrorCode.PROTOCOL_ERROR, "proxy.h2_protocol_error")
            return
        for event in events:
            if self.h2 is None or self.closing:
                return
            self._on_event(event)
        # what libnghttp2 answered (SETTINGS and PING ACKs, WINDOW_UPDATE, RST_STREAM, its
        # GOAWAY for a frame it refused) is queued now, so that a flood of them makes the
        # socket push back within this read; the streams' DATA waits for the flush
        self._send()
        if self.h2 is not None and not self.closing and not (conn.want_read or conn.want_write):
            self._drop_streams()  # libnghttp2 ended the connection (its GOAWAY is out)
            super().close()

    def _on_event(self, event: ngh2.Event) -> None:
        kind = type(event)
        if kind is _RequestReceived:
            assert isinstance(event, _RequestReceived)
            self._on_request(event.stream_id, event.headers, event.end_stream)
        elif kind is _DataReceived:
            assert isinstance(event, _DataReceived)
            stream = self.streams.get(event.stream_id)
            data = event.data
            if stream is None:  # a stream that is over here: its window is given back
                self._acknowledge(event.stream_id, len(data))
                return
            stream.feed_body(data, len(data))
            if event.end_stream:
                self._request_ended(stream)
        elif kind is _TrailersReceived:
            assert isinstance(event, _TrailersReceived)
            stream = self.streams.get(event.stream_id)  # request trailers are not forwarded
            if stream is not None and not stream.request_ended:
                self._request_ended(stream)
        elif kind is _WindowUpdated:
            assert isinstance(event, _WindowUpdated)
            if event.stream_id == 0:
                self.window_moved = True
                self._kick()
            else:
                stream = self.streams.get(event.stream_id)
                if stream is not None and not stream.scheduled:
                    self.schedule(stream)
        elif kind is _StreamReset:
            assert isinstance(event, _StreamReset)
            self._on_reset(event.stream_id)
        elif kind is _StreamClosed:
            assert isinstance(event, _StreamClosed)
            # closed by libnghttp2 while still ours (a malformed body, a broken rule)
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self._release(stream)
                self._after_stream()
        elif kind is _SettingsReceived:
            assert isinstance(event, _SettingsReceived)
            self.frame_size = event.settings.get(Setting.MAX_FRAME_SIZE, self.frame_size)
            self.window_moved = True
            self._kick()
        elif kind is _GoAwayReceived or kind is _ConnectionClosed:
            self._drop_streams()
            super().close()

    def _on_request(self, sid: int, headers: tuple[ngh2.Header, ...], ended: bool) -> None:
        conn = self.h2
        assert conn is not None
        self.highest = max(self.highest, sid)
        if (self.goaway_at and sid > self.goaway_at) or (
            len(self.streams) >= self.limits.max_concurrent_streams
        ):
            with contextlib.suppress(ngh2.NGH2Error):
                conn.reset_stream(sid, ErrorCode.REFUSED_STREAM)
            return
        stream = H2Stream(self, self, sid, self.limits.buffer_limit)
        self.streams[sid] = stream
        self._rearm()
        # known before the request starts: a local answer (429, 308, ...) may end the stream
        stream.request_ended = ended
        fields: Headers = [(h[0], h[1]) for h in headers]
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
            self._release(stream)
        if not self.resets.hit(self.proxy.now()):
            self._fatal(ErrorCode.ENHANCE_YOUR_CALM, "proxy.h2_rapid_reset")
            return
        self._after_stream()

    # -- output -----------------------------------------------------------------------------
    def _send(self) -> None:
        """libnghttp2's output queued now."""
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
            try:
                self._pump_scheduled()
                data = conn.data_to_send()
            except ngh2.ConnectionStateError:  # libnghttp2 ended the connection meanwhile
                self.h2 = None
                data = b""
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
        if stream is not None:
            self._acknowledge(stream.stream_id, flow)

    def _acknowledge(self, sid: int, flow: int) -> None:
        """``flow`` request bytes of stream ``sid`` taken: libnghttp2 gives them back in a
        WINDOW_UPDATE once enough are (the connection's window too when the stream is over)."""
        conn = self.h2
        if conn is None or not flow:
            return
        # ValueError: more than it holds unacknowledged (the connection was reset meanwhile)
        with contextlib.suppress(ngh2.NGH2Error, ValueError):
            conn.acknowledge_received_data(flow, sid)
        self._kick()

    def _release(self, stream: H2Stream) -> None:
        """``stream`` ends here: what it held unacknowledged goes back to the connection's
        window, then its backend side is dropped."""
        flow, stream.unacked = stream.unacked, 0
        self._acknowledge(stream.stream_id, flow)
        stream.gone()

    def send_head(self, stream: H2Stream, status: int, headers: Headers, *, end: bool) -> None:
        conn = self.h2
        if conn is None or stream.response_sent:
            return
        self.active = True
        try:
            conn.send_response(
                stream.stream_id, [(b":status", b"%d" % status), *headers], end_stream=end
            )
        except ngh2.NGH2Error:
            stream.gone()
            self.reset(stream, ErrorCode.INTERNAL_ERROR)
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
        # already closed on libnghttp2's side: nothing to tell
        with contextlib.suppress(ngh2.NGH2Error):
            conn.send_informational_response(stream.stream_id, [(b":status", b"100")])
        self._kick()

    def _window(self, conn: ngh2.Connection, sid: int) -> int:
        """What may be handed to libnghttp2 for stream ``sid`` now: what both windows have
        room for beyond what it holds already (so that it holds nothing past a flush)."""
        return min(
            conn.stream_remote_window_size(sid) - conn.queued_body_size(sid),
            conn.remote_window_size - conn.queued_body_size(),
        )

    def pump(self, stream: H2Stream, frames: int = -1) -> bool:
        """Hand libnghttp2 what the windows allow of ``stream``'s response (at most
        ``frames`` DATA frames; -1: no bound), ending the stream with its last piece once the
        response is over. True if some DATA went."""
        conn = self.h2
        if conn is None or stream.response_sent:
            return False
        self.active = True
        sid = stream.stream_id
        pending = stream.pending
        sent = False
        try:
            while pending and frames != 0:
                window = self._window(conn, sid)
                if frames > 0:
                    window = min(window, self.frame_size)
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
                    conn.send_trailers(sid, stream.trailers)
                else:
                    conn.end_stream(sid)
                stream.response_sent = True
        except ngh2.NGH2Error:
            stream.gone()
            self.reset(stream, ErrorCode.INTERNAL_ERROR)
            return sent
        if stream.response_sent:
            self._maybe_done(stream)
        else:
            stream.window_opened()
        return sent

    def pump_all(self) -> None:
        """The connection's window opened: every waiting stream gets a frame in turn."""
        conn = self.h2
        while conn is not None and conn.remote_window_size > conn.queued_body_size():
            moved = False
            waiting = [s for s in self.streams.values() if s.pending or s.end_pending]
            # the turn goes on after the stream served last, so that a window smaller than
            # one frame per stream does not keep going to the same first few
            later = [s for s in waiting if s.stream_id > self.last_served]
            for stream in later + [s for s in waiting if s.stream_id <= self.last_served]:
                if conn.remote_window_size <= conn.queued_body_size():
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
            # already closed on libnghttp2's side: nothing to reset
            with contextlib.suppress(ngh2.NGH2Error):
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
                self.reset(stream, ErrorCode.NO_ERROR)
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
