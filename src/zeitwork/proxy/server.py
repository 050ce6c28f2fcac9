"""The client side of the proxy: one ``ClientProtocol`` per accepted connection, and the
``Proxy`` engine that owns configuration, hooks, timers and draining.

Hot path per request: httptools parses the head; the router picks a pool, the pool a
backend; an idle upstream connection is reused (or one is opened); the rewritten head and the
body are written through; the upstream response head is rebuilt (hop-by-hop headers dropped,
Connection rebuilt, policy hook) and the body is streamed back with back-pressure both ways.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import httptools
import structlog
from mypy_extensions import mypyc_attr

from zeitwork.proxy.backends import Backend, Pool
from zeitwork.proxy.headers import (
    FORWARDING,
    HOP_BY_HOP,
    MAX_HEADER_BYTES,
    RequestIds,
    TrustedProxies,
    connection_value_tokens,
    forwarded_node,
    lower_name,
    problem_body,
    serialize_response,
    split_host,
    status_line,
    valid_request_id,
)
from zeitwork.proxy.types import (
    ClientInfo,
    ConnectionLimiter,
    Headers,
    LocalResponse,
    NullObserver,
    NullPolicy,
    Observer,
    RequestHead,
    RequestPolicy,
    Router,
)
from zeitwork.proxy.upstream import FLUSH_NOW_BYTES, UpstreamProtocol, write_out

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
BUFFER_LIMIT = 256 * 1024  # request body bytes held while the upstream is not attached yet

# reasons for pausing the client's reading (bit flags)
_PAUSE_BUFFER = 1
_PAUSE_UPSTREAM = 2
_PAUSE_QUEUE = 4
_PAUSE_WAIT = 8

# what a connection's deadline currently stands for (ClientProtocol.deadline_kind)
_D_IDLE = 0  # keep-alive between requests: closed quietly
_D_HEAD = 1  # reading a request head: 408
_D_STREAM = 2  # an exchange moving bytes: renewed while any byte moves either way
_D_TUNNEL = 3  # an upgraded connection: renewed while any byte moves either way
_D_LINGER = 4  # closing after an error answer: aborted
_D_FIRST_BYTE = 5  # the request is forwarded whole, the response head has not begun: 504

_log = structlog.get_logger("zeitwork.proxy")

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_CONNECTION_KEYWORDS = frozenset({b"keep-alive", b"close", b"upgrade"})

# request header name -> what the single pass over the head does with it
_K_HOST, _K_LENGTH, _K_TE, _K_CONNECTION, _K_UPGRADE, _K_EXPECT, _K_REQUEST_ID = range(1, 8)
_K_XFF, _K_XFP, _K_XFH, _K_FORWARDED, _K_DROP = range(8, 13)
_REQUEST_KINDS: dict[bytes, int] = {
    **{name: _K_DROP for name in HOP_BY_HOP},
    **{name: _K_FORWARDED for name in FORWARDING},
    b"host": _K_HOST,
    b"content-length": _K_LENGTH,
    b"transfer-encoding": _K_TE,
    b"connection": _K_CONNECTION,
    b"upgrade": _K_UPGRADE,
    b"expect": _K_EXPECT,
    b"x-request-id": _K_REQUEST_ID,
    b"x-forwarded-for": _K_XFF,
    b"x-forwarded-proto": _K_XFP,
    b"x-forwarded-host": _K_XFH,
    b"x-real-ip": _K_DROP,
}
# response header name (as sent, or lower-cased) -> kind; unknown names pass through
_R_PASS, _R_LENGTH, _R_TE, _R_CONNECTION, _R_UPGRADE, _R_DROP, _R_REQUEST_ID = range(7)
_RESPONSE_KINDS: dict[bytes, int] = {
    **{name: _R_DROP for name in HOP_BY_HOP},
    b"content-length": _R_LENGTH,
    b"transfer-encoding": _R_TE,
    b"connection": _R_CONNECTION,
    b"upgrade": _R_UPGRADE,
    b"x-request-id": _R_REQUEST_ID,
}


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """Limits and timeouts of the engine (seconds; bytes).

    Every timeout is one of inactivity or of a single wait; none bounds an exchange's age,
    so a stream, a long-poll or a slow transfer lasts as long as bytes keep moving.

    - ``header_timeout``: from a request's first byte to the end of its head (408);
    - ``idle_timeout``: a keep-alive connection with no request (closed quietly);
    - ``first_byte_timeout``: from the request having been forwarded whole to the start of
      the backend's response head (504);
    - ``stream_idle_timeout``: an exchange under way with no byte read or written on either
      side: before the response started 504 (408 while the client's body is awaited),
      after it the connection is cut, so the client sees an incomplete response;
    - ``tunnel_idle_timeout``: the same for an upgraded connection (WebSocket).
    """

    connect_timeout: float = 3.0
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    first_byte_timeout: float = 60.0
    stream_idle_timeout: float = 60.0
    tunnel_idle_timeout: float = 3600.0
    # connections over the limiter's caps are answered 503 with Retry-After after their
    # request head instead of being closed silently: at most this many at once (more are
    # aborted at accept), each for at most refusal_timeout (or header_timeout) seconds
    max_refusing: int = 64
    refusal_timeout: float = 3.0
    max_body: int = 1024 * 1024 * 1024  # 0: unlimited
    retry_after: int = 5
    scheme_tls: bytes = b"https"
    scheme_plain: bytes = b"http"
    response_request_id: bool = True


class _Reject(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class Exchange:
    """One request/response through the proxy."""

    __slots__ = (
        "backend",
        "body_buf",
        "body_done",
        "buffered",
        "chunked",
        "client",
        "close_after",
        "connect_task",
        "content_length",
        "expect",
        "failed",
        "finished",
        "head",
        "head_bytes",
        "head_only",
        "pool",
        "received",
        "request_id",
        "resp_chunked",
        "resp_until_close",
        "response_started",
        "retries",
        "sent",
        "sent_head",
        "started",
        "status",
        "streamed",
        "tunnel_buf",
        "upgrade",
        "upstream",
        "upstream_started",
        "upstream_until_close",
    )

    def __init__(self, head: RequestHead, client: ClientInfo) -> None:
        self.head = head
        self.client = client
        self.pool: Pool | None = None
        self.backend: Backend | None = None
        self.failed: Backend | None = None
        self.upstream: UpstreamProtocol | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.chunked = False
        self.content_length = 0
        self.received = 0
        self.body_done = False
        self.body_buf: list[bytes] = []
        self.buffered = 0
        self.streamed = False
        self.expect = False
        self.upgrade = False
        self.tunnel_buf = b""
        self.head_bytes = b""
        self.sent_head = False
        self.response_started = False
        self.resp_chunked = False
        self.resp_until_close = False
        self.upstream_until_close = False
        self.head_only = head.method == b"HEAD"
        self.request_id = b""  # head.request_id as bytes (for the response header)
        self.status = 0
        self.close_after = False
        self.finished = False
        self.retries = 0
        self.sent = 0  # response body bytes from the backend to the client (metrics)
        self.started = 0.0
        self.upstream_started = 0.0


class _Sink:
    """Callbacks of the parser left on closed connections (no reference back to them)."""


_NO_PARSER = httptools.HttpRequestParser(_Sink())
_NO_CLIENT = ClientInfo(peer_ip="", client_ip="")


def _lf_request_line(data: bytes) -> bytes:
    """``data`` with a CR put before the LF that ends its first line when that LF is bare
    (RFC 9112 2.2 lets a recipient accept it; llhttp refuses it on the request line)."""
    nl = data.find(b"\n")
    if nl > 0 and data[nl - 1] != 13:
        return data[:nl] + b"\r" + data[nl:]
    return data


def absolute_target(url: bytes) -> tuple[bytes, bytes]:
    """``http://a.example:8080/x?y`` -> (``a.example:8080``, ``/x?y``); raises _Reject for
    an empty authority or one with user information."""
    rest = url[url.find(b"://") + 3 :]
    end = len(rest)
    for sep in (b"/", b"?"):
        at = rest.find(sep)
        if 0 <= at < end:
            end = at
    authority = rest[:end]
    if not authority or b"@" in authority or b'"' in authority or b"\\" in authority:
        raise _Reject(400, "invalid authority in the request target")
    path = rest[end:]
    if not path:
        path = b"/"
    elif path[:1] == b"?":
        path = b"/" + path
    return authority, path


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The socket peer's address (IPv4-mapped IPv6 as plain IPv4); a Unix socket's peer
    has none and counts as 127.0.0.1."""
    peer = transport.get_extra_info("peername")
    ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
    return ip[7:] if ip.startswith("::ffff:") else ip


class OutputFlusher:
    """Hands the output queued during one event-loop iteration to the transports at its end.

    Writing each response and each forwarded request the moment it is ready makes the kernel
    wake an idle peer once per write, and on loopback or in a VM that wake-up is most of what
    a small write costs. Queued instead, and written after the loop has run every callback of
    the iteration, the writes leave back to back and a peer wakes once for many of them
    (``benchmarks/edge.sh`` measured about 13% more keep-alive HTTPS requests per second).
    Nothing waits longer than the rest of the current iteration, and a connection whose queue
    reaches ``FLUSH_NOW_BYTES`` writes at once. Requests to backends are written before
    responses to clients: the backends have the longer way to go.
    """

    __slots__ = ("clients", "scheduled", "upstreams")

    def __init__(self) -> None:
        self.clients: list[ClientProtocol] = []
        self.upstreams: list[UpstreamProtocol] = []
        self.scheduled = False

    def add_client(self, client: ClientProtocol) -> None:
        self.clients.append(client)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.run)

    def add_upstream(self, upstream: UpstreamProtocol) -> None:
        self.upstreams.append(upstream)
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.run)

    def run(self) -> None:
        self.scheduled = False
        upstreams, clients = self.upstreams, self.clients
        self.upstreams, self.clients = [], []
        for upstream in upstreams:
            try:
                upstream.flush()
            except Exception:  # one broken transport must not stall the rest
                upstream.fail()  # its exchange learns of it through connection_lost
        for client in clients:
            try:
                client.flush()
            except Exception:  # as above
                client.abort()


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientProtocol:
    """The client side of one connection (an asyncio protocol by duck typing, so that the
    module can be compiled with mypyc)."""

    def __init__(self, proxy: Proxy, *, tls: bool) -> None:
        self.proxy = proxy
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # RFC 9112 2.2: a bare LF ends a header line as CRLF does (a bare CR stays an error);
        # llhttp applies this to header lines, and _lf_request_line to the request line
        self.parser.set_dangerous_leniencies(lenient_optional_cr_before_lf=True)
        self.peer_ip = ""
        self.peer_port = 0  # 0: unknown (a PROXY protocol or Unix socket peer)
        # the RFC 7239 for= node of the peer, made at the first request (see forwarded_node)
        self.for_node = b""
        # set before connection_made when the client's address came from elsewhere (a PROXY
        # protocol header read before the TLS handshake): used instead of the socket peer
        self.forced_peer = ""
        # set when whoever accepted the connection already counted it with the proxy's
        # limiter (and releases it): this protocol then neither acquires nor releases
        self.preadmitted = False
        # over the caps: the request head is read (within refusal_timeout) and answered 503;
        # set by connection_made, or before it by a TLS layer that holds the refusal place
        self.refused = False
        self._holds_refusal = False
        self.trusted_peer = False
        # the TLS server name, set before connection_made by a TLS layer that knows it
        self.sni: str | None = None
        self.ex: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.tunnel: UpstreamProtocol | None = None
        self.closing = False
        self.paused = 0
        self.deadline = 0.0
        self.deadline_kind = _D_IDLE
        # set whenever a byte moves on this connection or its upstream; the deadline sweep
        # turns it into a later deadline for the kinds that are renewed by activity (one
        # attribute store per read instead of a clock read)
        self.active = False
        self.pending_error: tuple[int, str] | None = None
        self.admitted = False
        self.out: list[bytes] = []  # queued for the flusher (written at the iteration's end)
        self.out_bytes = 0
        self.info = _NO_CLIENT  # replaced in connection_made
        self.peer_b = b""
        self.client_b = b""
        self.scheme = b"http"
        self._url = b""
        self._headers: Headers = []
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
        if (
            not self.preadmitted
            and proxy.limiter is not None
            and not proxy.limiter.acquire(self.peer_ip)
        ):
            if not proxy.claim_refusal():
                self.transport.abort()
                return
            self.refused = self._holds_refusal = True
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
            self.deadline_kind = _D_LINGER  # no answer in time: aborted

    def connection_lost(self, exc: Exception | None) -> None:
        proxy = self.proxy
        if not self.admitted:
            self.parser = _NO_PARSER
            return
        self.admitted = False
        self.closing = True
        self.out = []
        self.parser = _NO_PARSER  # break the protocol <-> parser cycle: freed at once
        proxy.connections.discard(self)
        proxy.observer.connections_changed(-1)
        if self._holds_refusal:
            self._holds_refusal = False
            proxy.release_refusal()
        elif proxy.limiter is not None and not self.preadmitted and not self.refused:
            proxy.limiter.release(self.peer_ip)
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
        ex.finished = True
        if ex.connect_task is not None:
            ex.connect_task.cancel()
        up = ex.upstream
        if up is not None:
            ex.upstream = None
            up.abort()
        self._release_backend(ex, status=499)

    def close(self) -> None:
        self.closing = True
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.out = []
        if self.transport is not None:
            self.transport.abort()

    # -- output: queued, written by the proxy's flusher at the end of the loop iteration ------
    def _write(self, data: bytes) -> None:
        if self.transport is None:
            return
        out = self.out
        out.append(data)
        self.out_bytes += len(data)
        if len(out) == 1:
            self.proxy.flusher.add_client(self)
        if self.out_bytes >= FLUSH_NOW_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is queued now (the flusher calls this; so do close and half-close)."""
        out = self.out
        if not out:
            return
        self.out = []
        self.out_bytes = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            write_out(transport, out)

    def pause_reading_for(self, reason: int) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading_for(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and not self.closing:
            self.transport.resume_reading()

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
            if self.tunnel.transport is not None and self.tunnel.transport.can_write_eof():
                self.tunnel.flush()
                self.tunnel.transport.write_eof()
            return True
        if self.ex is None:
            return None
        self.ex.close_after = True
        return True

    # -- timers ------------------------------------------------------------------------------
    def on_deadline(self) -> None:
        kind = self.deadline_kind
        if kind == _D_LINGER:
            self.abort()
            return
        ex = self.ex
        if kind == _D_HEAD and ex is None:
            self._send_error(408, "request head not received in time", close=True)
            return
        if kind in (_D_FIRST_BYTE, _D_STREAM):
            self._stalled(ex, kind)
            return
        if kind == _D_TUNNEL:
            _log.info("proxy.tunnel_idle", peer=self.peer_ip)
            self.abort()
            return
        self.close()

    def _stalled(self, ex: Exchange | None, kind: int) -> None:
        """Nothing moved in time: answer 504 (408) before the response started, cut after."""
        if ex is None:
            self.abort()
            return
        waiting_for_client = not ex.body_done and not self.paused & _PAUSE_UPSTREAM
        if kind == _D_FIRST_BYTE:
            stage = "first_byte"
        elif ex.response_started:
            stage = "response"
        else:
            stage = "request_body" if waiting_for_client else "response_head"
        _log.warning(
            "proxy.exchange_stalled",
            stage=stage,
            request_id=ex.head.request_id,
            host=ex.head.host,
            peer=self.peer_ip,
            timeout=self.proxy.config.first_byte_timeout
            if kind == _D_FIRST_BYTE
            else self.proxy.config.stream_idle_timeout,
        )
        if ex.response_started:
            ex.finished = True
            up = ex.upstream
            ex.upstream = None
            if up is not None:
                up.abort()
            self._release_backend(ex, status=504)
            self.abort()
            return
        ex.close_after = True
        if waiting_for_client:
            ex.finished = True
            if ex.connect_task is not None:
                ex.connect_task.cancel()
            up = ex.upstream
            ex.upstream = None
            if up is not None:
                up.abort()
            self._release_backend(ex, status=408)
            self.ex = None
            self._send_error(408, "the request body stalled", close=True)
            return
        self._fail_upstream(ex, 504, "the backend did not answer in time", retry=False)

    def _arm_exchange(self, ex: Exchange, now: float) -> None:
        """The deadline of an exchange that starts (or whose request just ended)."""
        config = self.proxy.config
        if ex.body_done:
            self.deadline = now + config.first_byte_timeout
            self.deadline_kind = _D_FIRST_BYTE
        else:
            self.deadline = now + config.stream_idle_timeout
            self.deadline_kind = _D_STREAM

    # -- reading -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.active = True
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self.closing:
            return
        if self._at_start:
            data = _lf_request_line(data)
        try:
            self.parser.feed_data(data)
            if self._in_message and self._hbytes > MAX_HEADER_BYTES:
                self._reject(431, "request headers exceed 64 KiB")
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._on_upgrade_request(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reject(cause.status, cause.detail)
            else:
                self._reject(400, "malformed request")
        except httptools.HttpParserError:
            self._reject(400, "malformed request")

    def _reject(self, status: int, detail: str) -> None:
        broken = self.parsing
        self.parsing = None
        ex = self.ex
        if ex is None or ex.finished:
            self._send_error(status, detail, close=True)
            return
        if broken is ex or not ex.body_done:
            # the request being forwarded is itself broken (bad chunk, body over the limit)
            ex.close_after = True
            if ex.response_started:
                ex.finished = True
                up = ex.upstream
                ex.upstream = None
                if up is not None:
                    up.abort()
                self._release_backend(ex, status=status)
                self.abort()
                return
            ex.finished = True
            if ex.connect_task is not None:
                ex.connect_task.cancel()
            up = ex.upstream
            ex.upstream = None
            if up is not None:
                up.abort()
            self._release_backend(ex, status=status)
            self.ex = None
            self._send_error(status, detail, close=True)
            return
        # a later pipelined request is malformed: answer it after the current one, then close
        self.pending_error = (status, detail)
        self.pause_reading_for(_PAUSE_QUEUE)

    def on_message_begin(self) -> None:
        self._at_start = False
        self._url = b""
        self._headers = []
        self._hbytes = 0
        self._in_message = True
        if self.ex is None and not self.refused:
            self.deadline = self.proxy.now() + self.proxy.config.header_timeout
            self.deadline_kind = _D_HEAD

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._hbytes += len(url)
        if self._hbytes > MAX_HEADER_BYTES:
            raise _Reject(
                431 if len(self._url) < MAX_HEADER_BYTES else 414, "request head too large"
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hbytes += len(name) + len(value) + 4
        self._headers.append((lower_name(name), value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        proxy = self.proxy
        if self._hbytes > MAX_HEADER_BYTES:
            raise _Reject(431, "request headers exceed 64 KiB")
        if self.refused:
            raise _Reject(503, "too many open connections from this address")
        method = parser.get_method()
        version = parser.get_http_version()
        trusted = self.trusted_peer
        # the request line and Host go first, once the target is known
        parts: list[bytes] = [b"", b""]
        host = b""
        host_count = 0
        content_length = -1
        te: bytes | None = None
        expect = False
        xff: bytes | None = None
        xfp: bytes | None = None
        xfh: bytes | None = None
        fwd: bytes | None = None
        request_id: bytes | None = None
        tokens: frozenset[bytes] | None = None
        upgrade_value: bytes | None = None
        kinds = _REQUEST_KINDS
        for name, value in self._headers:
            kind = kinds.get(name)
            if kind is None:
                parts.append(b"%s: %s\r\n" % (name, value))
            elif kind == _K_HOST:
                if b'"' in value or b"\\" in value:
                    raise _Reject(400, "invalid Host header")
                host = value
                host_count += 1
            elif kind == _K_LENGTH:
                if not value.isdigit():
                    raise _Reject(400, "invalid Content-Length")
                length = int(value)
                if content_length >= 0 and length != content_length:
                    raise _Reject(400, "conflicting Content-Length headers")
                content_length = length
            elif kind == _K_TE:
                te = value if te is None else te + b"," + value
            elif kind == _K_CONNECTION:
                found = connection_value_tokens(value)
                tokens = found if tokens is None else tokens | found
            elif kind == _K_UPGRADE:
                upgrade_value = value
            elif kind == _K_EXPECT:
                if value.lower() != b"100-continue":
                    raise _Reject(417, "unsupported Expect")
                expect = True
            elif kind == _K_REQUEST_ID:
                request_id = value
            elif trusted:
                if kind == _K_XFF:
                    xff = value if xff is None else xff + b", " + value
                elif kind == _K_XFP:
                    xfp = value
                elif kind == _K_XFH:
                    if b'"' in value or b"\\" in value:
                        raise _Reject(400, "invalid X-Forwarded-Host header")
                    xfh = value
                elif name == b"forwarded":
                    fwd = value if fwd is None else fwd + b", " + value
                elif kind == _K_FORWARDED:
                    parts.append(b"%s: %s\r\n" % (name, value))
            # hop-by-hop headers and untrusted forwarding headers are dropped
        if host_count > 1:
            raise _Reject(400, "more than one Host header")
        chunked = False
        if te is not None:
            if content_length >= 0:
                raise _Reject(400, "both Content-Length and Transfer-Encoding")
            if te.strip().lower() != b"chunked":
                raise _Reject(
                    400 if b"chunked" in te.lower() else 501, "unsupported Transfer-Encoding"
                )
            chunked = True
        max_body = proxy.config.max_body
        if max_body and content_length > max_body:
            raise _Reject(413, f"request body over the {max_body} byte limit")
        if method == b"CONNECT":
            raise _Reject(405, "CONNECT is not supported")
        url = self._url
        if b"#" in url:
            raise _Reject(400, "a fragment (#) is not allowed in the request target")
        if url[:1] != b"/":
            if url[:8].lower().startswith((b"http://", b"https://")):
                # absolute-form (RFC 9112 3.2.2): its authority is the host; origin-form on
                authority, url = absolute_target(url)
                if host and split_host(host) != split_host(authority):
                    raise _Reject(400, "the Host header does not match the request target")
                host = authority
            elif not (url == b"*" and method == b"OPTIONS"):
                raise _Reject(400, "invalid request target")
        if not host:
            # HTTP/1.0 without Host too: nothing to route by, and never forwarded without one
            raise _Reject(400, "missing Host header")
        parts[1] = b"host: %s\r\n" % host
        q = url.find(b"?")
        path = (url if q < 0 else url[:q]).decode("latin-1")
        # llhttp sets its upgrade flag only after this callback: decide here, the same way
        upgrade = upgrade_value is not None and tokens is not None and b"upgrade" in tokens
        if tokens is not None:
            tokens -= _CONNECTION_KEYWORDS
            if tokens:
                parts = [p for p in parts if p.split(b":", 1)[0] not in tokens]
        if request_id is None or not valid_request_id(request_id):
            request_id = proxy.request_ids.next_bytes()
        peer = self.peer_b
        info = self.info
        if xff is not None:
            client_ip = proxy.trusted.client_ip(self.peer_ip, xff)
            if client_ip != info.client_ip:
                info = ClientInfo(
                    peer_ip=self.peer_ip, client_ip=client_ip, tls=self.tls, sni=self.sni
                )
            parts.append(b"x-forwarded-for: %s, %s\r\n" % (xff, peer))
        else:
            parts.append(b"x-forwarded-for: %s\r\n" % peer)
        host_name = split_host(host) if host else ""
        node = self.for_node
        if not node:
            node = self.for_node = forwarded_node(self.peer_ip, self.peer_port)
        # RFC 7239: a trusted hop's elements are kept and this hop's is appended; otherwise
        # one element names the client as the X-Forwarded-* headers do
        if fwd is not None:
            fwd_first, fwd_node, fwd_host, fwd_proto = fwd + b", ", node, host, self.scheme
        else:
            fwd_first = b""
            fwd_node = node if info is self.info else forwarded_node(info.client_ip)
            fwd_host = xfh if xfh is not None else host
            fwd_proto = xfp if xfp is not None else self.scheme
        parts.append(
            b"x-forwarded-proto: %s\r\nx-forwarded-host: %s\r\nx-real-ip: %s\r\n"
            b'forwarded: %s%s;host="%s";proto=%s\r\nx-request-id: %s\r\n'
            % (
                xfp if xfp is not None else self.scheme,
                xfh if xfh is not None else host_name.encode("latin-1"),
                info.client_ip.encode() if info is not self.info else self.client_b,
                fwd_first,
                fwd_node,
                fwd_host,
                fwd_proto,
                request_id,
            )
        )
        if upgrade:
            parts.append(b"connection: upgrade\r\nupgrade: %s\r\n\r\n" % upgrade_value)
        elif chunked:
            parts.append(b"transfer-encoding: chunked\r\n\r\n")
        elif content_length > 0:
            parts.append(b"content-length: %d\r\n\r\n" % content_length)
        elif method in _BODY_METHODS:
            parts.append(b"content-length: 0\r\n\r\n")
        else:
            parts.append(b"\r\n")
        parts[0] = b"%s %s HTTP/1.1\r\n" % (method, url)
        head = RequestHead(
            method,
            url,
            path,
            host_name,
            version,
            self._headers,
            parser.should_keep_alive(),
            request_id.decode("latin-1"),
        )
        ex = Exchange(head, info)
        ex.request_id = request_id
        ex.head_bytes = b"".join(parts)
        ex.chunked = chunked
        if content_length > 0:
            ex.content_length = content_length
        ex.body_done = upgrade or (not chunked and content_length <= 0)
        ex.expect = expect and not ex.body_done
        ex.upgrade = upgrade
        ex.started = now = proxy.now()
        self._in_message = False
        self.parsing = ex
        if self.ex is None:
            self.ex = ex
            self._arm_exchange(ex, now)
            self._start(ex)
        else:
            self.queue.append(ex)
            self.pause_reading_for(_PAUSE_QUEUE)

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None:
            return
        ex.received += len(body)
        max_body = self.proxy.config.max_body
        if max_body and ex.received > max_body:
            raise _Reject(413, f"request body over the {max_body} byte limit")
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
                self.pause_reading_for(_PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        self._at_start = True
        ex = self.parsing
        self.parsing = None
        if ex is None:
            return
        ex.body_done = True
        if ex.finished:
            return
        if ex is self.ex and not ex.response_started and self.deadline_kind == _D_STREAM:
            self._arm_exchange(ex, self.proxy.now())  # now waiting for the response head
        up = ex.upstream
        if up is not None and ex.sent_head and ex.chunked:
            up.write(b"0\r\n\r\n")

    # -- dispatch ------------------------------------------------------------------------------
    def _start(self, ex: Exchange) -> None:
        proxy = self.proxy
        head = ex.head
        if proxy.has_policy:
            local = proxy.policy.on_request(head, ex.client)
            if local is not None:
                self._send_local(ex, local)
                return
        pool = proxy.router.resolve(head.host, head.path)
        if pool is None:
            self._send_problem(ex, 503, "no backend serves this host", retry_after=True)
            return
        ex.pool = pool
        backend = pool.pick(ex.client.client_ip)
        if backend is None:
            self._send_problem(ex, 503, "no healthy backend", retry_after=True)
            return
        self._assign(ex, backend)

    def _assign(self, ex: Exchange, backend: Backend) -> None:
        ex.backend = backend
        backend.in_flight += 1
        backend.requests += 1
        conn = backend.take_idle()
        if conn is not None:
            self._attach(ex, conn)
            return
        ex.connect_task = asyncio.get_running_loop().create_task(self._connect(ex, backend))

    async def _connect(self, ex: Exchange, backend: Backend) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.proxy.config.connect_timeout):
                conn = UpstreamProtocol(backend, self.proxy.flusher)
                await loop.create_connection(
                    lambda: cast(asyncio.Protocol, conn), backend.host, backend.port
                )
        except (OSError, TimeoutError) as exc:
            ex.connect_task = None
            if ex.finished:
                return
            backend.record_failure()
            timeout = isinstance(exc, TimeoutError)
            self._fail_upstream(
                ex,
                504 if timeout else 502,
                "connecting to the backend timed out"
                if timeout
                else "the backend refused the connection",
                retry=True,
            )
            return
        ex.connect_task = None
        if ex.finished or self.closing:
            conn.close()
            return
        self._attach(ex, conn)

    def _attach(self, ex: Exchange, conn: UpstreamProtocol) -> None:
        ex.upstream = conn
        conn.ex = ex
        conn.client = self
        conn.reusable = False
        conn.got_bytes = False
        # perf_counter, not loop.time(): uvloop's loop clock ticks in whole milliseconds, so
        # sub-millisecond upstream latencies measured with it came out as 0 and were lost
        ex.upstream_started = time.perf_counter()
        body = ex.body_buf
        if body:
            if ex.chunked:
                framed = [ex.head_bytes]
                for chunk in body:
                    framed += (b"%x\r\n" % len(chunk), chunk, b"\r\n")
                if ex.body_done:
                    framed.append(b"0\r\n\r\n")
                conn.writelines(framed)
            else:
                conn.writelines([ex.head_bytes, *body])
            if ex.body_done:
                ex.streamed = False  # kept for a retry on a stale connection
            else:
                ex.body_buf = []
                ex.buffered = 0
                ex.streamed = True
        elif ex.chunked and ex.body_done:
            conn.writelines([ex.head_bytes, b"0\r\n\r\n"])
        else:
            conn.write(ex.head_bytes)
        ex.sent_head = True
        if self.paused & _PAUSE_BUFFER:
            self.resume_reading_for(_PAUSE_BUFFER)
        if ex.expect and ex.received == 0 and not ex.body_done:
            self._write(_CONTINUE)
        if ex.upgrade and ex.tunnel_buf:
            conn.write(ex.tunnel_buf)
            ex.tunnel_buf = b""

    def _on_upgrade_request(self, rest: bytes) -> None:
        # the upgrade request is the last one parsed (its message is already complete)
        ex = self.queue[-1] if self.queue else self.ex
        self.parsing = None
        if ex is None:
            self.close()
            return
        ex.tunnel_buf = rest
        # no more HTTP from this client until the backend accepts or refuses the upgrade
        self.pause_reading_for(_PAUSE_WAIT)
        if ex.upstream is not None and ex.sent_head and rest:
            ex.upstream.write(rest)
            ex.tunnel_buf = b""

    # -- upstream events -----------------------------------------------------------------------
    def upstream_head(self, ex: Exchange, up: UpstreamProtocol, status: int) -> bool:
        """Write the rebuilt response head; return True when no body follows (HEAD)."""
        if ex is not self.ex or ex.finished:
            return False
        proxy = self.proxy
        head = ex.head
        headers: Headers = []
        tokens: frozenset[bytes] | None = None
        length = -1
        upstream_chunked = False
        has_rid = False
        upgrade_value: bytes | None = None
        kinds = _RESPONSE_KINDS
        for name, value in up.headers:
            lname = lower_name(name)
            kind = kinds.get(lname)
            if kind is None:
                headers.append((lname, value))
            elif kind == _R_LENGTH:
                length = int(value) if value.isdigit() else -1
                headers.append((lname, value))
            elif kind == _R_TE:
                upstream_chunked = True
            elif kind == _R_CONNECTION:
                found = connection_value_tokens(value)
                tokens = found if tokens is None else tokens | found
            elif kind == _R_UPGRADE:
                upgrade_value = value
            elif kind == _R_REQUEST_ID:
                has_rid = True
                headers.append((lname, value))
        if tokens is not None:
            tokens -= _CONNECTION_KEYWORDS
            if tokens:
                headers = [h for h in headers if h[0] not in tokens]
        if status == 101 and (not ex.upgrade or upgrade_value is None):
            raise httptools.HttpParserError("unexpected 101 from the backend")
        ex.response_started = True
        ex.status = status
        self.deadline_kind = _D_STREAM  # renewed by the sweep: self.active is set
        self.active = True
        close = (
            ex.close_after
            or not head.keep_alive
            or proxy.draining
            or self.pending_error is not None
            or (ex.upgrade and status != 101)
        )
        if status == 101 and upgrade_value is not None:
            headers.append((b"connection", b"upgrade"))
            headers.append((b"upgrade", upgrade_value))
        elif ex.head_only or status in (204, 304) or (length >= 0 and not upstream_chunked):
            pass
        else:
            if not upstream_chunked:
                ex.upstream_until_close = True  # the body ends when the backend closes
            if head.http_version == "1.1":
                ex.resp_chunked = True
                headers.append((b"transfer-encoding", b"chunked"))
            else:
                ex.resp_until_close = True
                close = True
        if not has_rid and proxy.config.response_request_id:
            headers.append((b"x-request-id", ex.request_id))
        if proxy.has_policy:
            proxy.policy.on_response(head, ex.client, status, headers)
        if status != 101:
            if close:
                ex.close_after = True
                headers.append((b"connection", b"close"))
            elif head.http_version == "1.0":
                headers.append((b"connection", b"keep-alive"))
        out = [status_line(status)]
        for name, value in headers:
            out.append(b"%s: %s\r\n" % (name, value))
        out.append(b"\r\n")
        self._write(b"".join(out))
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
        if ex is not self.ex or ex.finished:
            up.abort()
            return
        if ex.resp_chunked:
            self._write(b"0\r\n\r\n")
        ex.upstream = None
        if keep_alive and ex.body_done and not ex.upgrade:
            up.release()
        else:
            up.ex = None
            up.client = None
            up.close()
        if not ex.body_done:
            ex.close_after = True  # the rest of the request body cannot be skipped safely
        backend = ex.backend
        if backend is not None:
            if ex.status >= 500:
                backend.record_failure()
            else:
                backend.record_success()
        self._finish(ex)

    def upstream_upgraded(self, up: UpstreamProtocol, rest: bytes) -> None:
        ex = self.ex
        if ex is None or ex.status != 101 or self.transport is None:
            up.abort()
            self.abort()
            return
        # both sides now carry raw bytes
        ex.finished = True
        self._release_backend(ex, status=101)
        up.ex = None
        up.client = None
        up.tunnel = self
        self.tunnel = up
        self.ex = None
        self.queue.clear()
        self.deadline = self.proxy.now() + self.proxy.config.tunnel_idle_timeout
        self.deadline_kind = _D_TUNNEL
        if rest:
            self._write(rest)
        if ex.tunnel_buf:
            up.write(ex.tunnel_buf)
            ex.tunnel_buf = b""
        self.paused = 0
        self.transport.resume_reading()

    def tunnel_data(self, data: bytes) -> None:
        self.active = True
        self._write(data)

    def tunnel_closed(self) -> None:
        self.tunnel = None
        self.close()

    def upstream_garbage(self, ex: Exchange, up: UpstreamProtocol) -> None:
        ex.upstream = None
        if ex.backend is not None:
            ex.backend.record_failure()
        if ex.response_started:
            ex.finished = True
            self._release_backend(ex, status=502)
            self.abort()
            return
        ex.close_after = True
        self._fail_upstream(ex, 502, "the backend sent an invalid response", retry=False)

    def upstream_lost(self, ex: Exchange, up: UpstreamProtocol) -> None:
        ex.upstream = None
        if ex.finished or ex is not self.ex:
            return
        if ex.response_started:
            if ex.upstream_until_close:
                if ex.resp_chunked:
                    self._write(b"0\r\n\r\n")
                self._finish(ex)  # the close-delimited body ended
                return
            ex.finished = True
            self._release_backend(ex, status=502)
            self.abort()  # truncated response: the client must see the failure
            return
        stale = up.served > 0 and not up.got_bytes
        if not stale and ex.backend is not None:
            ex.backend.record_failure()
        self._fail_upstream(
            ex, 502, "the backend closed the connection", retry=stale, same_backend=stale
        )

    # -- failure and completion ------------------------------------------------------------------
    def _fail_upstream(
        self, ex: Exchange, status: int, detail: str, *, retry: bool, same_backend: bool = False
    ) -> None:
        failed = ex.backend
        up = ex.upstream
        if up is not None:
            ex.upstream = None
            up.abort()
        if ex.connect_task is not None:
            ex.connect_task.cancel()
            ex.connect_task = None
        if failed is not None:
            failed.in_flight -= 1
            ex.backend = None
        can_retry = (
            retry
            and ex.retries == 0
            # any method when nothing reached the backend (a refused connect), else only
            # idempotent ones
            and (ex.head.method in IDEMPOTENT or not ex.sent_head)
            and ex.body_done
            and not ex.streamed
            and not ex.response_started
            and ex.pool is not None
            and not self.closing
        )
        if can_retry and ex.pool is not None:
            ex.retries += 1
            other = failed if same_backend else ex.pool.pick(ex.client.client_ip, exclude=failed)
            if other is not None and (same_backend or other is not failed):
                ex.sent_head = False
                self._assign(ex, other)
                return
        ex.failed = failed
        if not ex.body_done:
            ex.close_after = True
        self._send_problem(ex, status, detail, backend=failed)

    def _release_backend(self, ex: Exchange, *, status: int) -> None:
        backend = ex.backend
        ex.backend = None
        pool = ex.pool
        if backend is not None:
            backend.in_flight -= 1
            self.proxy.observer.request_done(
                pool.name if pool is not None else "-",
                backend.address,
                status,
                time.perf_counter() - ex.upstream_started,
                ex.received,
                ex.sent,
            )
        else:
            self.proxy.observer.request_done(
                pool.name if pool is not None else "-",
                ex.failed.address if ex.failed is not None else "-",
                status,
                0.0,
                ex.received,
                ex.sent,
            )

    def _finish(self, ex: Exchange) -> None:
        ex.finished = True
        self._release_backend(ex, status=ex.status)
        self.ex = None
        ex.body_buf = []
        if ex.close_after or self.closing:
            if ex.body_done:
                self.close()
            else:  # the client may still be sending the body we did not read
                self.linger_close()
            return
        if self.pending_error is not None:
            status, detail = self.pending_error
            self.pending_error = None
            self._send_error(status, detail, close=True)
            return
        proxy = self.proxy
        if proxy.draining:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.ex = nxt
            self._arm_exchange(nxt, proxy.now())
            if not self.queue:
                self.resume_reading_for(_PAUSE_QUEUE)
            self._start(nxt)
            return
        if self.parsing is None:
            self.deadline = proxy.now() + proxy.config.idle_timeout
            self.deadline_kind = _D_IDLE
        else:
            self.deadline = proxy.now() + proxy.config.header_timeout
            self.deadline_kind = _D_HEAD
        if self.paused & _PAUSE_WAIT:
            self.resume_reading_for(_PAUSE_WAIT)

    # -- local answers ---------------------------------------------------------------------------
    def _send_local(self, ex: Exchange, local: LocalResponse) -> None:
        headers = list(local.headers)
        if self.proxy.config.response_request_id:
            headers.append((b"x-request-id", ex.request_id))
        self.proxy.policy.on_response(ex.head, ex.client, local.status, headers)
        close = local.close or not ex.head.keep_alive or not ex.body_done or self.proxy.draining
        ex.status = local.status
        ex.close_after = close
        self._write(
            serialize_response(
                local.status, headers, local.body, close=close, head_only=ex.head_only
            )
        )
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
        content_type, body = self.render_error(status, detail, ex.head.headers)
        headers: Headers = [(b"content-type", content_type)]
        if retry_after or status == 503:
            headers.append((b"retry-after", str(self.proxy.config.retry_after).encode()))
        ex.failed = backend or ex.failed
        self._send_local(ex, LocalResponse(status=status, headers=headers, body=body))

    def _send_error(self, status: int, detail: str, *, close: bool) -> None:
        """An answer outside any exchange (malformed input, head timeout)."""
        self.closing = True
        if self.transport is None:
            return
        content_type, body = self._error_body(status, detail)
        headers: Headers = [(b"content-type", content_type)]
        if status in (429, 503):
            headers.append((b"retry-after", b"%d" % self.proxy.config.retry_after))
        self._write(serialize_response(status, headers, body, close=close))
        self.proxy.observer.request_done("-", "-", status, 0.0, 0, 0)
        if close:
            self.linger_close()

    def _error_body(self, status: int, detail: str) -> tuple[bytes, bytes]:
        """The content type and body of an answer outside any exchange, rendered from the
        headers read so far (``_headers``)."""
        return self.render_error(status, detail, self._headers)

    def render_error(self, status: int, detail: str, headers: Headers) -> tuple[bytes, bytes]:
        """The error-renderer hook: the content type and body of one of the core's own
        answers (502, 503, 413, 400, ...) from its status, a one-line detail and the
        request's headers. An RFC 9457 problem of the one vocabulary here; a subclass (the
        edge) may render HTML for a browser, without re-parsing this JSON."""
        return b"application/problem+json", problem_body(status, detail)

    def linger_close(self) -> None:
        """Send what is queued, shut our side, discard input for a moment, then close.

        Closing at once while the client is still sending makes the kernel answer with a
        reset that can destroy the error response before the client reads it."""
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        self.flush()
        if transport.can_write_eof():
            transport.write_eof()
            self.deadline = self.proxy.now() + 2.0
            self.deadline_kind = _D_LINGER
        else:
            transport.close()


@mypyc_attr(allow_interpreted_subclasses=True)
class Proxy:
    """The engine: configuration, hooks, open connections, the deadline sweep, draining."""

    def __init__(
        self,
        *,
        router: Router,
        config: ProxyConfig | None = None,
        policy: RequestPolicy | None = None,
        observer: Observer | None = None,
        limiter: ConnectionLimiter | None = None,
        trusted: TrustedProxies | None = None,
    ) -> None:
        self.router = router
        self.config = config or ProxyConfig()
        self.policy: RequestPolicy = policy or NullPolicy()
        self.has_policy = policy is not None and not isinstance(policy, NullPolicy)
        self.observer: Observer = observer or NullObserver()
        self.limiter = limiter
        self.trusted = trusted or TrustedProxies(())
        self.request_ids = RequestIds()
        self.flusher = OutputFlusher()
        self.connections: set[ClientProtocol] = set()
        self.servers: list[asyncio.Server] = []
        self.draining = False
        self.refusing = 0  # connections over the caps, waiting for their 503
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_event: asyncio.Event | None = None

    def now(self) -> float:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def protocol_factory(self, *, tls: bool = False) -> Any:
        def factory() -> ClientProtocol:
            return ClientProtocol(self, tls=tls)

        return factory

    async def serve(
        self,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        backlog: int = 1024,
    ) -> asyncio.Server:
        """Serve HTTP (or HTTPS when ``ssl_context`` is given) on an already bound socket."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self.protocol_factory(tls=ssl_context is not None),
            sock=sock,
            ssl=ssl_context,
            ssl_handshake_timeout=ssl_handshake_timeout if ssl_context is not None else None,
            backlog=backlog,
        )
        self.listening(server)
        return server

    def listening(self, server: asyncio.Server) -> None:
        """Track a listener whose connections this engine serves (``drain`` closes it) and
        start the deadline sweep; ``serve`` calls it, a subclass serving a socket its own way
        calls it too."""
        loop = self._loop = asyncio.get_running_loop()
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.call_later(0.25, self._sweep)

    def _sweep(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        config = self.config
        for conn in list(self.connections):
            if conn.active:
                conn.active = False
                kind = conn.deadline_kind
                if kind == _D_STREAM:
                    conn.deadline = now + config.stream_idle_timeout
                elif kind == _D_TUNNEL:
                    conn.deadline = now + config.tunnel_idle_timeout
            if (
                conn.deadline
                and now >= conn.deadline
                and (not conn.closing or conn.deadline_kind == _D_LINGER)
            ):
                conn.on_deadline()
            elif self.draining and conn.ex is None and conn.parsing is None and conn.tunnel is None:
                conn.close()
        self._sweeper = loop.call_later(0.25, self._sweep)

    def claim_refusal(self) -> bool:
        """A place for one connection over the caps to get its 503 (``max_refusing``)."""
        if self.refusing >= self.config.max_refusing:
            return False
        self.refusing += 1
        return True

    def release_refusal(self) -> None:
        self.refusing -= 1

    def connection_closed(self) -> None:
        if self._idle_event is not None and not self.connections:
            self._idle_event.set()

    @property
    def in_flight(self) -> int:
        return sum(1 for c in self.connections if c.ex is not None or c.tunnel is not None)

    async def drain(self, grace: float) -> int:
        """Stop accepting, let in-flight exchanges finish (up to ``grace`` s), close the rest.

        Returns the number of connections that had to be cut."""
        self.draining = True
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            if conn.ex is None and conn.parsing is None and conn.tunnel is None:
                conn.close()
        if self.connections:
            self._idle_event = asyncio.Event()
            try:
                async with asyncio.timeout(grace):
                    await self._idle_event.wait()
            except TimeoutError:
                pass
        cut = len(self.connections)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        return cut


def reuse_port_socket(host: str, port: int, *, reuse_port: bool = True) -> socket.socket:
    """A listening TCP socket with SO_REUSEPORT, so several worker processes share a port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
