"""The client side of one HTTP/1.1 connection: ``ClientProtocol``, an asyncio protocol.

Its state (the exchange under way and the pipelined ones behind it, the deadline, why reading
is paused, the output queued for the flusher) is its base's, ``connection.Connection``, the
class the modules it delegates to know it by; here it feeds httptools and implements the
hooks: ``http1`` classifies and rewrites the heads, ``exchange`` moves an exchange on
(routing, the backend connection, retry, completion), ``tunnel`` runs an upgraded
connection, ``responses`` writes the core's own answers. The per-read paths
(``data_received``, ``on_body``, ``upstream_body``, ``tunnel_data``) stay here, with no call
between them and ``Connection._write``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools
from mypy_extensions import mypyc_attr

from zeitwork.proxy import exchange as exchanges
from zeitwork.proxy import responses, tunnel
from zeitwork.proxy.config import (
    BUFFER_LIMIT,
    DEADLINE_DRAIN,
    DEADLINE_FIRST_BYTE,
    DEADLINE_HEAD,
    DEADLINE_LINGER,
    DEADLINE_STREAM,
    DEADLINE_TUNNEL,
    PAUSE_BUFFER,
    PAUSE_QUEUE,
)
from zeitwork.proxy.connection import Connection, EngineState
from zeitwork.proxy.headers import MAX_HEADER_BYTES, forwarded_node, lower_name
from zeitwork.proxy.http1 import RequestError, forwardable_request, lf_request_line, response_head
from zeitwork.proxy.state import Exchange
from zeitwork.proxy.types import ClientInfo, LocalResponse
from zeitwork.proxy.upstream import UpstreamProtocol

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend


class _RequestSink:
    """Callbacks of the parser left on closed connections (no reference back to them)."""


NO_PARSER = httptools.HttpRequestParser(_RequestSink())


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientProtocol(Connection):
    """The client side of one connection (an asyncio protocol by duck typing, so that the
    module can be compiled with mypyc): HTTP/1.1 framing, and the hooks of ``Connection``."""

    def __init__(self, proxy: EngineState, *, tls: bool) -> None:
        super().__init__(proxy, tls=tls)
        self.parser = httptools.HttpRequestParser(self)
        # RFC 9112 2.2: a bare LF ends a header line as CRLF does (a bare CR stays an error);
        # llhttp applies this to header lines, and _lf_request_line to the request line
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self._url = b""
        self._hbytes = 0
        self._in_message = False
        self._at_start = True  # the next byte fed starts a request (its request line)

    # -- connection lifecycle ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):  # as peer_address, with the port
            ip: str = peer[0]
            self.peer_ip = ip[7:] if ip.startswith("::ffff:") else ip
            self.peer_port = peer[1]
        else:
            self.peer_ip = "127.0.0.1"
        if self.forced_peer and self.forced_peer != self.peer_ip:
            self.peer_ip = self.forced_peer  # named by a PROXY header: its port is not kept
            self.peer_port = 0
        proxy = self.proxy
        if not proxy.admit(self):
            self.transport.abort()
            return
        self.admitted = True
        self.trusted_peer = proxy.trusted.trusts(self.peer_ip)
        self.peer_b = self.client_b = self.peer_ip.encode()
        self.scheme = proxy.config.scheme_tls if self.tls else proxy.config.scheme_plain
        self.info = ClientInfo(
            peer_ip=self.peer_ip, client_ip=self.peer_ip, tls=self.tls, sni=self.sni
        )
        proxy.connections.add(self)
        proxy.observer.connections_changed(1)
        self.deadline = proxy.now() + proxy.config.idle_timeout
        if proxy.draining:
            self.deadline = proxy.now() + proxy.config.header_timeout
        if self.refused:
            config = proxy.config
            self.deadline = proxy.now() + min(config.refusal_timeout, config.header_timeout)
            self.deadline_kind = DEADLINE_LINGER  # no answer in time: aborted

    def connection_lost(self, exc: Exception | None) -> None:
        proxy = self.proxy
        if not self.admitted:
            self.parser = NO_PARSER
            return
        self.admitted = False
        self.closing = True
        self.out = []
        self.parser = NO_PARSER  # break the protocol <-> parser cycle: freed at once
        proxy.connections.discard(self)
        proxy.observer.connections_changed(-1)
        proxy.discharge(self)
        pool = self.tunnel_pool
        if pool is not None:  # its tunnel's place in the route's count
            self.tunnel_pool = None
            pool.give_tunnel()
        if self.tunnel is not None:
            up, self.tunnel = self.tunnel, None
            up.tunnel = None
            up.abort()
        for ex in [self.ex, *self.queue]:
            if ex is not None and not ex.finished:
                self._abandon(ex)
        self.queue.clear()
        self.ex = None
        proxy.connection_closed()

    def _abandon(self, ex: Exchange) -> None:
        """The client went away: drop the upstream side of ``ex`` without reusing it."""
        exchanges.abandon(self, ex)

    def pause_writing(self) -> None:
        # the client reads slower than the backend sends: stop reading the backend
        up = self.tunnel or (self.ex.upstream if self.ex is not None else None)
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.active = True
        up = self.tunnel or (self.ex.upstream if self.ex is not None else None)
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

    def eof_received(self) -> bool | None:
        # half-close from the client: finish the current exchange, then close
        if self.closing:
            return None
        if self.tunnel is not None:
            tunnel.client_eof(self)  # the half-close passed on, or the tunnel's end
            return True
        if self.ex is None:
            return None
        self.ex.close_after = True
        return True

    # -- timers ------------------------------------------------------------------------------
    def on_deadline(self) -> None:
        kind = self.deadline_kind
        if kind == DEADLINE_LINGER:
            self.abort()
            return
        ex = self.ex
        if kind == DEADLINE_HEAD and ex is None:
            self._send_error(408, "request head not received in time", close=True)
            return
        if kind in (DEADLINE_FIRST_BYTE, DEADLINE_STREAM):
            exchanges.stalled(self, ex, kind)
            return
        if kind == DEADLINE_TUNNEL:
            tunnel.idle(self)
            return
        if kind == DEADLINE_DRAIN:
            tunnel.go_away(self)
            return
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.active = True
        if self.tunnel is not None:
            if self.ws is None:
                self.tunnel.write(data)
            else:
                tunnel.to_backend(self, data)
            return
        if self.closing:
            return
        if self._at_start:
            data = lf_request_line(data)
        try:
            self.parser.feed_data(data)
            if self._in_message and self._hbytes > MAX_HEADER_BYTES:
                exchanges.refuse(self, 431, "request headers exceed 64 KiB")
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            tunnel.upgrade_requested(self, data[offset:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestError):
                exchanges.refuse(self, cause.status, cause.detail)
            else:
                exchanges.refuse(self, 400, "malformed request")
        except httptools.HttpParserError:
            exchanges.refuse(self, 400, "malformed request")

    def on_message_begin(self) -> None:
        self._at_start = False
        self._url = b""
        self._headers = []
        self._hbytes = 0
        self._in_message = True
        if self.ex is None and not self.refused:
            self.deadline = self.proxy.now() + self.proxy.config.header_timeout
            self.deadline_kind = DEADLINE_HEAD

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._hbytes += len(url)
        if self._hbytes > MAX_HEADER_BYTES:
            raise RequestError(
                431 if len(self._url) < MAX_HEADER_BYTES else 414, "request head too large"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hbytes += len(name) + len(value) + 4
        self._headers.append((lower_name(name), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        proxy = self.proxy
        if self._hbytes > MAX_HEADER_BYTES:
            raise RequestError(431, "request headers exceed 64 KiB")
        if self.refused:
            raise RequestError(503, "too many open connections from this address")
        node = self.for_node
        if not node:
            node = self.for_node = forwarded_node(self.peer_ip, self.peer_port)
        ex = forwardable_request(
            parser.get_method(),
            parser.get_http_version(),
            self._url,
            self._headers,
            parser.should_keep_alive(),
            trusted=self.trusted_peer,
            peer_ip=self.peer_ip,
            peer_b=self.peer_b,
            client_b=self.client_b,
            info=self.info,
            node=node,
            scheme=self.scheme,
            max_body=proxy.config.max_body,
            proxies=proxy.trusted,
            request_ids=proxy.request_ids,
        )
        ex.started = now = proxy.now()
        self._in_message = False
        self.parsing = ex
        if self.ex is None:
            self.ex = ex
            self._arm_exchange(ex, now)
            exchanges.start(self, ex)
        else:
            self.queue.append(ex)
            self.pause_reading_for(PAUSE_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        ex.received += len(body)
        max_body = self.proxy.config.max_body
        if max_body and ex.received > max_body:
            raise RequestError(413, f"request body over the {max_body} byte limit")
        if ex.finished:
            return
        up = ex.upstream
        if up is not None and ex.sent_head:
            if ex.chunked:
                up.writelines([b"%x\r\n" % len(body), body, b"\r\n"])
            else:
                up.write(body)
        else:
            ex.body_buf.append(body)
            ex.buffered += len(body)
            if ex.buffered > BUFFER_LIMIT:
                self.pause_reading_for(PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        self._at_start = True
        ex = self.parsing
        self.parsing = None
        if ex is None:
            return
        ex.body_done = True
        if ex.finished:
            return
        if ex is self.ex and not ex.response_started and self.deadline_kind == DEADLINE_STREAM:
            self._arm_exchange(ex, self.proxy.now())  # now waiting for the response head
        up = ex.upstream
        if up is not None and ex.sent_head and ex.chunked:
            up.write(b"0\r\n\r\n")

    # -- upstream events -----------------------------------------------------------------------
    def upstream_head(self, ex: Exchange, up: UpstreamProtocol, status: int) -> bool:
        """Write the rebuilt response head; return True when no body follows (HEAD)."""
        if ex is not self.ex or ex.finished:
            return False
        proxy = self.proxy
        head = response_head(
            ex,
            up.headers,
            status,
            closing=proxy.draining or self.pending_error is not None,
            response_request_id=proxy.config.response_request_id,
            policy=proxy.policy if proxy.has_policy else None,
        )
        self.deadline_kind = DEADLINE_STREAM  # renewed by the sweep: self.active is set
        self.active = True
        self._write(head)
        return ex.head_only

    def upstream_body(self, ex: Exchange, body: bytes) -> None:
        if ex is not self.ex or ex.head_only:
            return
        ex.sent += len(body)
        if ex.resp_chunked:
            if len(body) < 4096:
                self._write(b"%x\r\n%s\r\n" % (len(body), body))
            else:
                self._write(b"%x\r\n" % len(body))
                self._write(body)
                self._write(b"\r\n")
        else:
            self._write(body)

    def upstream_complete(self, ex: Exchange, up: UpstreamProtocol, keep_alive: bool) -> None:
        exchanges.complete(self, ex, up, keep_alive)

    def upstream_upgraded(self, up: UpstreamProtocol, rest: bytes) -> None:
        tunnel.upgraded(self, up, rest)

    def tunnel_data(self, data: bytes) -> None:
        self.active = True
        if self.ws is None:
            self._write(data)
        else:
            tunnel.to_client(self, data)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close()

    def tunnel_backend_eof(self) -> None:
        tunnel.backend_eof(self)

    def upstream_garbage(self, ex: Exchange, up: UpstreamProtocol) -> None:
        exchanges.garbage(self, ex)

    def upstream_lost(self, ex: Exchange, up: UpstreamProtocol) -> None:
        exchanges.lost(self, ex, up)

    def _assign(self, ex: Exchange, backend: Backend) -> None:
        exchanges.assign(self, ex, backend)

    def _attach(self, ex: Exchange, up: UpstreamProtocol) -> None:
        """Send ``ex``'s request on ``up`` (an upstream protocol already connected)."""
        exchanges.attach(self, ex, up)

    # -- failure and completion (``exchange``; a subclass may override ``_finish``) -----------
    def _fail_upstream(
        self, ex: Exchange, status: int, detail: str, *, retry: bool, same_backend: bool = False
    ) -> None:
        exchanges.fail_upstream(self, ex, status, detail, retry=retry, same_backend=same_backend)

    def _release_backend(self, ex: Exchange, *, status: int) -> None:
        exchanges.release_backend(self, ex, status=status)

    def _finish(self, ex: Exchange) -> None:
        exchanges.finish(self, ex)

    # -- local answers (``responses``) -------------------------------------------------------
    def _send_local(self, ex: Exchange, local: LocalResponse) -> None:
        responses.send_local(self, ex, local)

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
        """An answer outside any exchange (malformed input, head timeout)."""
        responses.send_error(self, status, detail, close=close)

    def linger_close(self) -> None:
        """Send what is queued, shut our side, discard input for a moment, then close.

        Closing at once while the client is still sending makes the kernel answer with a
        reset that can destroy the error response before the client reads it."""
        responses.linger_close(self)
