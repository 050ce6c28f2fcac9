"""The engine: ``Proxy`` owns the configuration, the hooks, the open client connections,
the deadline sweep and draining; ``OutputFlusher`` writes each loop iteration's output at
its end; ``reuse_port_socket`` makes the listening socket worker processes share."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from zeitwork.proxy.client import ClientProtocol
from zeitwork.proxy.config import (
    DEADLINE_DRAIN,
    DEADLINE_LINGER,
    DEADLINE_STREAM,
    DEADLINE_TUNNEL,
    ProxyConfig,
)
from zeitwork.proxy.headers import RequestIds, TrustedProxies
from zeitwork.proxy.tunnel import CLOSE_WAIT, go_away
from zeitwork.proxy.types import (
    ConnectionLimiter,
    NullObserver,
    NullPolicy,
    Observer,
    RequestPolicy,
    Router,
)

if TYPE_CHECKING:
    from zeitwork.proxy.upstream import UpstreamProtocol


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
                if kind == DEADLINE_STREAM:
                    conn.deadline = now + config.stream_idle_timeout
                elif kind == DEADLINE_TUNNEL:
                    conn.deadline = now + config.tunnel_idle_timeout
            if conn.deadline_kind == DEADLINE_TUNNEL:
                up = conn.tunnel
                if up is not None and up.backend.draining:
                    # the backend left the route table: the tunnel runs on for a while
                    conn.deadline = min(conn.deadline, now + config.tunnel_drain_timeout)
                    conn.deadline_kind = DEADLINE_DRAIN
            if (
                conn.deadline
                and now >= conn.deadline
                and (not conn.closing or conn.deadline_kind == DEADLINE_LINGER)
            ):
                conn.on_deadline()
            elif (
                self.draining
                and conn.ex is None
                and conn.parsing is None
                and conn.tunnel is None
                and not conn.closing
            ):
                conn.close()
        self._sweeper = loop.call_later(0.25, self._sweep)

    def admit(self, conn: ClientProtocol) -> bool:
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

    def discharge(self, conn: ClientProtocol) -> None:
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

    @property
    def in_flight(self) -> int:
        return sum(1 for c in self.connections if c.ex is not None or c.tunnel is not None)

    async def drain(self, grace: float) -> int:
        """Stop accepting, let in-flight exchanges finish (up to ``grace`` s), close the rest.

        Upgraded connections run on up to ``grace`` too; then a WebSocket gets its close
        frames (1001, Going Away: ``tunnel.go_away``) and up to ``tunnel.CLOSE_WAIT`` s more
        to end cleanly. Returns the number of connections that had to be cut."""
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
        tunnels = [conn for conn in self.connections if conn.tunnel is not None]
        for conn in tunnels:
            go_away(conn)
        if tunnels and self.connections and self._idle_event is not None:
            try:
                async with asyncio.timeout(CLOSE_WAIT):
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
