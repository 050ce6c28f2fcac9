"""The engine: ``Proxy`` owns the configuration, the hooks, the open client connections
(``connection.EngineState``, its base: what they use of it), the deadline sweep and
draining; ``reuse_port_socket`` makes the listening socket worker processes share."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import structlog
from mypy_extensions import mypyc_attr

from zeitwork.proxy.client import ClientProtocol
from zeitwork.proxy.config import (
    DEADLINE_DRAIN,
    DEADLINE_LINGER,
    DEADLINE_STREAM,
    DEADLINE_TUNNEL,
    ProxyConfig,
)
from zeitwork.proxy.connection import Connection, EngineState
from zeitwork.proxy.headers import TrustedProxies
from zeitwork.proxy.state import stall_timeout
from zeitwork.proxy.tunnel import CLOSE_WAIT, go_away
from zeitwork.proxy.tunnel import idle_timeout as tunnel_idle_timeout
from zeitwork.proxy.types import ConnectionLimiter, Observer, RequestPolicy, Router

_log = structlog.get_logger("zeitwork.proxy")


def peer_address(transport: asyncio.BaseTransport) -> str:
    """The socket peer's address (IPv4-mapped IPv6 as plain IPv4); a Unix socket's peer
    has none and counts as 127.0.0.1."""
    peer = transport.get_extra_info("peername")
    ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
    return ip[7:] if ip.startswith("::ffff:") else ip


@mypyc_attr(allow_interpreted_subclasses=True)
class Proxy(EngineState):
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
        super().__init__(
            router=router,
            config=config,
            policy=policy,
            observer=observer,
            limiter=limiter,
            trusted=trusted,
        )
        self.servers: list[asyncio.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None

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
        try:
            for conn in list(self.connections):
                try:
                    self._sweep_one(conn, now)
                except Exception:  # one connection's fault never stops every deadline
                    _log.exception("proxy.sweep_failed", client=conn.peer_ip)
                    conn.abort()
        finally:
            self._sweeper = loop.call_later(0.25, self._sweep)

    def _sweep_one(self, conn: Connection, now: float) -> None:
        config = self.config
        if conn.active:
            conn.active = False
            kind = conn.deadline_kind
            if kind == DEADLINE_STREAM:  # the route's response idle timeout, if any
                conn.deadline = now + stall_timeout(config, conn.ex, kind)
            elif kind == DEADLINE_TUNNEL:  # the route's tunnel idle timeout, if any
                conn.deadline = now + tunnel_idle_timeout(conn)
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
