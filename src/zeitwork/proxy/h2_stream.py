"""One HTTP/2 stream at the proxy: an exchange of the core's client protocol whose request
comes from h2's decoded fields and whose answer goes back as HEADERS and DATA frames.

``H2Stream`` is a client connection to the proxy core (``connection.Connection``, what the
exchange, the core's answers and the backend side know of one) without HTTP/1.1 framing or
a parser: the stream's request (``h2_rules.request_fields``) is made into an exchange by the
function that makes an HTTP/1.1 request's (``http1.forwardable_request``), so a stream is
routed, rate-limited and policed (``RequestPolicy``), given its forwarding headers and sent
over the backends' HTTP/1.1 keep-alive pools exactly as an HTTP/1.1 request is; DATA goes to
the backend as it comes, under the same body limit and buffering. Only the way back differs:
response bytes wait in the stream until the connection (``StreamOwner``,
``http2.H2Connection``) sends them as the client's windows allow, once per event-loop
iteration.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Protocol

import httptools
from ngh2 import ErrorCode as ErrorCodes

from zeitwork.proxy import exchange as exchanges
from zeitwork.proxy import responses
from zeitwork.proxy.config import BUFFER_LIMIT, PAUSE_BUFFER
from zeitwork.proxy.connection import Connection
from zeitwork.proxy.exchange import CONTINUE
from zeitwork.proxy.h2_rules import H2Request, response_headers
from zeitwork.proxy.http1 import RequestError, forwardable_request
from zeitwork.proxy.state import Exchange
from zeitwork.proxy.types import Headers, LocalResponse
from zeitwork.proxy.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend


class StreamOwner(Protocol):
    """What a stream asks of its connection (``http2.H2Connection``)."""

    def acknowledge(self, stream: H2Stream | None, flow: int) -> None: ...

    def send_head(self, stream: H2Stream, status: int, headers: Headers, *, end: bool) -> None: ...

    def send_continue(self, stream: H2Stream) -> None: ...

    def schedule(self, stream: H2Stream) -> None: ...

    def reset(self, stream: H2Stream, code: int) -> None: ...

    def render_error(self, status: int, detail: str, headers: Headers) -> tuple[bytes, bytes]: ...


class H2Stream(Connection):
    """One stream: an exchange of the proxy core whose answer goes to ``conn``."""

    def __init__(
        self, conn: StreamOwner, base: Connection, stream_id: int, buffer_limit: int
    ) -> None:
        super().__init__(base.proxy, tls=base.tls)
        self.conn = conn
        self.stream_id = stream_id
        self.buffer_limit = buffer_limit
        self.peer_ip = base.peer_ip
        self.peer_port = base.peer_port
        self.trusted_peer = base.trusted_peer
        self.peer_b = base.peer_b
        self.client_b = base.client_b
        self.scheme = base.scheme
        self.info = base.info
        self.sni = base.sni
        self.for_node = base.for_node
        self.refused = base.refused
        self.request_ended = False
        # response body bytes not sent yet (the client's window, or the next flush)
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.end_pending = False  # the response ends once ``pending`` is sent
        self.response_sent = False
        self.scheduled = False  # in the connection's list of streams to send from
        self.unacked = 0  # request bytes not acknowledged while the backend is paused
        self.upstream_paused = False
        # the upstream parser appends trailer fields to its head's list: they start here
        self.head_fields = 0
        self.trailers: Headers = []

    # -- the request side -------------------------------------------------------------------
    def begin(self, request: H2Request) -> None:
        """The request's fields are in: the exchange starts (or is answered at once)."""
        proxy = self.proxy
        try:
            if self.refused:  # over the caps: this stream gets its 503
                raise RequestError(503, "too many open connections from this address")
            ex = forwardable_request(
                request.method,
                "1.1",
                request.target,
                request.fields,
                True,
                trusted=self.trusted_peer,
                peer_ip=self.peer_ip,
                peer_b=self.peer_b,
                client_b=self.client_b,
                info=self.info,
                node=self.for_node,
                scheme=self.scheme,
                max_body=proxy.config.max_body,
                proxies=proxy.trusted,
                request_ids=proxy.request_ids,
            )
        except RequestError as exc:
            self._headers = request.fields  # the error page's Accept
            self._send_error(exc.status, exc.detail, close=True)
            return
        ex.started = proxy.now()
        self.ex = ex
        if not ex.body_done:
            self.parsing = ex
        exchanges.start(self, ex)

    def feed_body(self, data: bytes, flow: int) -> None:
        ex = self.parsing
        if data and ex is not None:
            ex.received += len(data)
            max_body = self.proxy.config.max_body
            if max_body and ex.received > max_body:
                exchanges.refuse(self, 413, f"request body over the {max_body} byte limit")
            elif not ex.finished:
                up = ex.upstream
                if up is not None and ex.sent_head:
                    if ex.chunked:
                        up.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
                    else:
                        up.write(data)
                else:  # held until the backend connection is there (``exchange.attach``)
                    ex.body_buf.append(data)
                    ex.buffered += len(data)
                    if ex.buffered > BUFFER_LIMIT:
                        self.pause_reading_for(PAUSE_BUFFER)
        if self.paused:
            self.unacked += flow
        else:
            self.conn.acknowledge(self, flow)

    def end_request(self) -> None:
        self.request_ended = True
        ex = self.parsing
        if ex is None:
            return
        self.parsing = None
        ex.body_done = True
        up = ex.upstream
        if not ex.finished and up is not None and ex.sent_head and ex.chunked:
            up.write(b"0\r\n\r\n")

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
        if not self.scheduled:
            self.conn.schedule(self)
        up = ex.upstream
        if self.pending_bytes > self.buffer_limit and up is not None and up.transport is not None:
            self.upstream_paused = True
            up.transport.pause_reading()

    def upstream_complete(self, ex: Exchange, up: UpstreamProtocol, keep_alive: bool) -> None:
        if ex is self.ex and not ex.finished and len(up.headers) > self.head_fields:
            self.trailers = response_headers(up.headers[self.head_fields :])
        exchanges.complete(self, ex, up, keep_alive)

    def upstream_garbage(self, ex: Exchange, up: UpstreamProtocol) -> None:
        exchanges.garbage(self, ex)

    def upstream_lost(self, ex: Exchange, up: UpstreamProtocol) -> None:
        exchanges.lost(self, ex, up)

    def upstream_upgraded(self, up: UpstreamProtocol, rest: bytes) -> None:
        up.abort()  # never asked for (a 101 is refused at the head)
        self.abort()

    def tunnel_data(self, data: bytes) -> None:
        return None  # no stream is ever a tunnel

    def tunnel_closed(self) -> None:
        return None

    def tunnel_backend_eof(self) -> None:
        return None

    def _attach(self, ex: Exchange, up: UpstreamProtocol) -> None:
        exchanges.attach(self, ex, up)

    def _fail_upstream(
        self, ex: Exchange, status: int, detail: str, *, retry: bool, same_backend: bool = False
    ) -> None:
        exchanges.fail_upstream(self, ex, status, detail, retry=retry, same_backend=same_backend)

    def on_deadline(self) -> None:
        return None  # the connection's deadline covers its streams (``H2Connection``)

    def window_opened(self) -> None:
        """Called by the connection after sending: the backend may be read again."""
        ex = self.ex
        if self.upstream_paused and self.pending_bytes <= self.buffer_limit // 2:
            self.upstream_paused = False
            up = ex.upstream if ex is not None else None
            if up is not None and up.transport is not None and not up.closed:
                up.transport.resume_reading()

    def _finish(self, ex: Exchange) -> None:
        ex.finished = True
        exchanges.release_backend(self, ex, status=ex.status)
        self.ex = None
        ex.body_buf = []
        self.upstream_paused = False
        self.end_pending = True
        if not self.scheduled:
            self.conn.schedule(self)

    def _send_local(self, ex: Exchange, local: LocalResponse) -> None:
        headers = list(local.headers)
        if self.proxy.config.response_request_id:
            headers.append((b"x-request-id", ex.request_id))
        self.proxy.policy.on_response(ex.head, ex.client, local.status, headers)
        ex.status = local.status
        self._answer(local.status, headers, b"" if ex.head_only else local.body)
        self._finish(ex)

    def _send_problem(
        self,
        ex: Exchange,
        status: int,
        detail: str,
        *,
        retry_after: bool = False,
        backend: Backend | None = None,
    ) -> None:
        responses.send_problem(self, ex, status, detail, retry_after=retry_after, backend=backend)

    def _send_error(self, status: int, detail: str, *, close: bool) -> None:
        """The request broke a rule of the core (400, 413, 431...), outside an exchange."""
        content_type, body = self.render_error(status, detail, self._headers)
        headers: Headers = [(b"content-type", content_type)]
        if status in (429, 503):
            headers.append((b"retry-after", b"%d" % self.proxy.config.retry_after))
        self._answer(status, headers, body)
        self.proxy.observer.request_done("-", "-", status, 0.0, 0, 0)
        self.end_pending = True
        if not self.scheduled:
            self.conn.schedule(self)

    def _answer(self, status: int, headers: Headers, body: bytes) -> None:
        if self.response_sent:
            return
        headers.append((b"content-length", b"%d" % len(body)))
        self.conn.send_head(self, status, headers, end=not body)
        if body and not self.response_sent:
            self.pending.append(body)
            self.pending_bytes += len(body)

    def render_error(self, status: int, detail: str, headers: Headers) -> tuple[bytes, bytes]:
        return self.conn.render_error(status, detail, headers)

    def _write(self, data: bytes) -> None:
        """The core writes here only its ``100 Continue`` (the rest is overridden): over
        HTTP/2 that is an informational HEADERS frame."""
        if data == CONTINUE:
            self.conn.send_continue(self)

    def abort(self) -> None:
        """The exchange failed after its response began: the stream is reset."""
        ex = self.ex
        if ex is not None and not ex.finished:
            exchanges.abandon(self, ex)
        self.ex = None
        self.parsing = None
        self.conn.reset(self, ErrorCodes.INTERNAL_ERROR)

    def close(self) -> None:
        return None

    def linger_close(self) -> None:
        return None

    def gone(self) -> None:
        """The client reset the stream, or the connection ended: drop the backend side."""
        self.response_sent = True
        self.pending.clear()
        self.pending_bytes = 0
        self.parsing = None
        ex = self.ex
        self.ex = None
        if ex is not None and not ex.finished:
            exchanges.abandon(self, ex)
