"""What the proxy core's modules know of a client connection and of its engine.

``Connection`` is a client connection as the exchange (``exchange``), the upgraded tunnel
(``tunnel``), the core's own answers (``responses``), the h2c pool (``h2_upstream``) and the
engine's sweep see it: its state, its output queue and pausing, and the hooks they call.
``client.ClientProtocol`` (HTTP/1.1) implements the hooks without a body here, by calling
those modules, which therefore depend on this class and not on the client's. The backend
connection (``upstream``) sees less of it: ``upstream.UpstreamOwner``, its base.
``EngineState`` is what a connection uses of its engine (``engine.Proxy`` adds listening, the
deadline sweep and draining): its configuration and hooks, the flusher, the open connections
and their admission.

They are classes rather than ``typing.Protocol``: in the compiled build (``hatch_build.py``)
an attribute of a Protocol-typed value is looked up by name and a method called through
Python, while these attributes are read many times a request; a native base keeps them
field reads and its hooks native (vtable) calls.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from zeitwork.proxy.config import (
    DEADLINE_FIRST_BYTE,
    DEADLINE_IDLE,
    DEADLINE_STREAM,
    ProxyConfig,
)
from zeitwork.proxy.headers import RequestIds, TrustedProxies, problem_body
from zeitwork.proxy.output import FLUSH_NOW_BYTES, OutputFlusher, write_out
from zeitwork.proxy.state import Exchange, WebSocketTunnel, stall_timeout
from zeitwork.proxy.types import (
    ClientInfo,
    ConnectionLimiter,
    Headers,
    LocalResponse,
    NullObserver,
    NullPolicy,
    Observer,
    RequestPolicy,
    Router,
)
from zeitwork.proxy.upstream import UpstreamOwner, UpstreamProtocol

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend, Pool

_NO_CLIENT = ClientInfo(peer_ip="", client_ip="")


@mypyc_attr(allow_interpreted_subclasses=True)
class EngineState:
    """The configuration, hooks, output flusher and open connections of one engine, and the
    admission of its connections (``engine.Proxy`` is the engine)."""

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
        self.connections: set[Connection] = set()
        self.draining = False
        self.refusing = 0  # connections over the caps, waiting for their 503
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_event: asyncio.Event | None = None

    def now(self) -> float:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def admit(self, conn: Connection) -> bool:
        """Count a new connection with the limiter; one over its caps is ``refused`` (its
        request is answered 503) while a refusal place is free, else not admitted (False:
        aborted at once). A connection ``preadmitted`` by whoever accepted it is not counted."""
        limiter = self.limiter
        if conn.preadmitted or limiter is None or limiter.acquire(conn.peer_ip):
            return True
        if not self.claim_refusal():
            return False
        conn.refused = conn._holds_refusal = True
        return True

    def discharge(self, conn: Connection) -> None:
        """An admitted connection closed: its limiter count or refusal place is given back."""
        if conn._holds_refusal:
            conn._holds_refusal = False
            self.release_refusal()
        elif self.limiter is not None and not conn.preadmitted and not conn.refused:
            self.limiter.release(conn.peer_ip)

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


@mypyc_attr(allow_interpreted_subclasses=True)
class Connection(UpstreamOwner):
    """One client connection: its state and output, and the hooks the exchange, the tunnel,
    the core's answers and the backend side call (``client.ClientProtocol`` implements the
    ones that raise ``NotImplementedError`` here and in ``UpstreamOwner``)."""

    def __init__(self, proxy: EngineState, *, tls: bool) -> None:
        super().__init__()  # transport, active
        self.proxy = proxy
        self.tls = tls
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
        self.ws: WebSocketTunnel | None = None  # a WebSocket tunnel's framing
        # the route whose tunnel count this connection's tunnel holds a place in (given back
        # when the connection closes); its limits are the tunnel's (``tunnel.idle_timeout``)
        self.tunnel_pool: Pool | None = None
        self.tunnel_eof = 0  # tunnel.EOF_CLIENT | EOF_BACKEND: which sides of it shut theirs
        self.closing = False
        self.paused = 0
        self.deadline = 0.0
        self.deadline_kind = DEADLINE_IDLE
        self.pending_error: tuple[int, str] | None = None
        self.admitted = False
        self.out: list[bytes] = []  # queued for the flusher (written at the iteration's end)
        self.out_bytes = 0
        self.info = _NO_CLIENT  # replaced in connection_made
        self.peer_b = b""
        self.client_b = b""
        self.scheme = b"http"
        self._headers: Headers = []  # the request head's headers read so far

    # -- closing -------------------------------------------------------------------------------
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

    # -- timers ------------------------------------------------------------------------------
    def on_deadline(self) -> None:
        """The deadline passed (the engine's sweep): what happens depends on its kind."""
        raise NotImplementedError

    def _arm_exchange(self, ex: Exchange, now: float) -> None:
        """The deadline of an exchange that starts (or whose request just ended)."""
        config = self.proxy.config
        if ex.body_done:  # the route's response idle timeout, if it has one
            self.deadline = now + stall_timeout(config, ex, DEADLINE_FIRST_BYTE)
            self.deadline_kind = DEADLINE_FIRST_BYTE
        else:
            self.deadline = now + config.stream_idle_timeout
            self.deadline_kind = DEADLINE_STREAM

    def _attach(self, ex: Exchange, up: UpstreamProtocol) -> None:
        """Send ``ex``'s request on ``up`` (an upstream protocol already connected)."""
        raise NotImplementedError

    def _fail_upstream(
        self, ex: Exchange, status: int, detail: str, *, retry: bool, same_backend: bool = False
    ) -> None:
        raise NotImplementedError

    # -- completion and the core's own answers (``exchange``, ``responses``) ------------------
    def _finish(self, ex: Exchange) -> None:
        raise NotImplementedError

    def _send_local(self, ex: Exchange, local: LocalResponse) -> None:
        raise NotImplementedError

    def _send_problem(
        self,
        ex: Exchange,
        status: int,
        detail: str,
        *,
        retry_after: bool = False,
        backend: Backend | None = None,
    ) -> None:
        raise NotImplementedError

    def _send_error(self, status: int, detail: str, *, close: bool) -> None:
        """An answer outside any exchange (malformed input, head timeout)."""
        raise NotImplementedError

    def linger_close(self) -> None:
        """Send what is queued, shut our side, discard input for a moment, then close."""
        raise NotImplementedError

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
