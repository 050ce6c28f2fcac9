"""Upgraded connections (WebSocket and other ``Upgrade`` protocols): once the backend
answers 101 the client connection and the backend connection carry raw bytes both ways, each
side's reads written to the other (``ClientProtocol.tunnel_data`` and
``UpstreamProtocol.data_received``; the client side is a ``connection.Connection`` here),
renewed by activity up to the route's tunnel idle timeout (its pool's, else the engine's
``tunnel_idle_timeout``); an idle tunnel is closed as for a drain (below). Each tunnel holds
a place in its route's tunnel count (``Pool.max_tunnels``) until its client connection
closes. A half-close is passed on, the other direction running on; once both sides have shut
their sending side the tunnel ends, both connections closed.

Drains. A tunnel is not cut when its backend drains (it left the route table: a release
replaces it) or when the proxy drains (SIGTERM): it runs on, for ``tunnel_drain_timeout``
after the backend drained, or up to the end of the proxy's drain grace, and then ``go_away``
closes it. A WebSocket (the request asked for ``Upgrade: websocket``, the backend answered
101) gets a close frame with code 1001 (Going Away) each way, the client's from the server
side, the backend's masked as a client's, each written between two frames of its direction
(``websocket.FrameTracker`` follows both; a frame in flight is let through first, and what
follows it is dropped), so the client sees a clean close and reconnects, to the new release.
A direction whose endpoint already sent its own close frame gets none. Other tunnels are
closed (FIN both ways). Whatever has not reached a frame boundary within ``CLOSE_WAIT`` s is
cut.
"""

from __future__ import annotations

import structlog

from zeitwork.proxy.config import DEADLINE_LINGER, DEADLINE_TUNNEL, PAUSE_WAIT
from zeitwork.proxy.connection import Connection
from zeitwork.proxy.exchange import release_backend
from zeitwork.proxy.state import WebSocketTunnel
from zeitwork.proxy.upstream import UpstreamProtocol
from zeitwork.proxy.websocket import GOING_AWAY, close_frame

_log = structlog.get_logger("zeitwork.proxy")

CLOSE_WAIT = 2.0  # s a going-away tunnel may take to reach frame boundaries and close
EOF_CLIENT = 1  # Connection.tunnel_eof: the client shut its sending side
EOF_BACKEND = 2  # the backend did


def upgrade_requested(conn: Connection, rest: bytes) -> None:
    """The parser ended an upgrade request; ``rest`` is what the client sent after it."""
    # the upgrade request is the last one parsed (its message is already complete)
    ex = conn.queue[-1] if conn.queue else conn.ex
    conn.parsing = None
    if ex is None:
        conn.close()
        return
    ex.tunnel_buf = rest
    if rest:
        # bytes before the 101: a WebSocket client sends none (RFC 6455 4.1), so this one's
        # framing is not followed (a drain closes its tunnel without close frames)
        ex.websocket = False
    # no more HTTP from this client until the backend accepts or refuses the upgrade
    conn.pause_reading_for(PAUSE_WAIT)
    if ex.upstream is not None and ex.sent_head and rest:
        ex.upstream.write(rest)
        ex.tunnel_buf = b""


def upgraded(conn: Connection, up: UpstreamProtocol, rest: bytes) -> None:
    """The backend answered 101: both connections become a tunnel (``rest``: what the
    backend sent after its head)."""
    ex = conn.ex
    if ex is None or ex.status != 101 or conn.transport is None:
        up.abort()
        conn.abort()
        return
    # both sides now carry raw bytes
    ex.finished = True
    if ex.holds_tunnel:  # its place in the route's tunnel count: the connection's now
        ex.holds_tunnel = False
        conn.tunnel_pool = ex.pool
    release_backend(conn, ex, status=101)
    up.ex = None
    up.client = None
    up.tunnel = conn
    conn.tunnel = up
    conn.ex = None
    conn.queue.clear()
    conn.deadline = conn.proxy.now() + idle_timeout(conn)
    conn.deadline_kind = DEADLINE_TUNNEL
    if ex.websocket:
        conn.ws = WebSocketTunnel()
    if rest:
        conn.tunnel_data(rest)
    if ex.tunnel_buf:
        buf, ex.tunnel_buf = ex.tunnel_buf, b""
        to_backend(conn, buf)
    conn.paused = 0
    conn.transport.resume_reading()


def idle_timeout(conn: Connection) -> float:
    """How long the tunnel of ``conn`` may go without a byte either way: its route's tunnel
    idle timeout when the route has one, else the engine's ``tunnel_idle_timeout``."""
    pool = conn.tunnel_pool
    if pool is not None and pool.tunnel_idle_timeout:
        return pool.tunnel_idle_timeout
    return conn.proxy.config.tunnel_idle_timeout


def idle(conn: Connection) -> None:
    """Nothing moved either way for the tunnel's idle time: it is closed as for a drain, a
    WebSocket with close frames (1001) at frame boundaries, any other tunnel at once."""
    _log.info(
        "proxy.tunnel_idle",
        peer=conn.peer_ip,
        timeout=idle_timeout(conn),
        websocket=conn.ws is not None,
    )
    go_away(conn, logged=True)


def client_eof(conn: Connection) -> None:
    """The client shut its sending side: the backend gets the half-close and the other
    direction runs on; once the backend has shut its side too the tunnel is over and both
    connections close (else both would stay open, done, until the tunnel's idle time, and
    keep a place in the route's tunnel count)."""
    up = conn.tunnel
    if up is None:
        return
    conn.tunnel_eof |= EOF_CLIENT
    transport = up.transport
    if conn.tunnel_eof & EOF_BACKEND or transport is None or not transport.can_write_eof():
        _end(conn, up)
        return
    up.flush()
    transport.write_eof()


def backend_eof(conn: Connection) -> None:
    """The backend of the tunnel of ``conn`` shut its sending side: the client gets the
    half-close (a client connection that cannot take one, TLS, is closed), and once both
    sides have shut theirs the tunnel ends."""
    up = conn.tunnel
    if up is None:
        return
    conn.tunnel_eof |= EOF_BACKEND
    transport = conn.transport
    if (
        conn.tunnel_eof & EOF_CLIENT
        or transport is None
        or transport.is_closing()
        or not transport.can_write_eof()
    ):
        _end(conn, up)
        return
    conn.flush()
    transport.write_eof()


def _end(conn: Connection, up: UpstreamProtocol) -> None:
    conn.tunnel = None
    up.tunnel = None
    up.close()
    conn.close()


def to_backend(conn: Connection, data: bytes) -> None:
    """Bytes from the client for the backend (a WebSocket's framing followed)."""
    up = conn.tunnel
    ws = conn.ws
    if up is None:
        return
    if ws is None:
        up.write(data)
        return
    tracker = ws.to_backend
    if not ws.going_away:
        tracker.feed(data)
        up.write(data)
        return
    if ws.backend_done:
        return  # after the close frame nothing more is sent
    used = tracker.feed(data, stop_at_boundary=True)
    if used:
        up.write(data if used == len(data) else data[:used])
    if tracker.at_boundary:
        _close_backend(conn, ws)


def to_client(conn: Connection, data: bytes) -> None:
    """Bytes from the backend for the client (a WebSocket's framing followed)."""
    ws = conn.ws
    if ws is None:
        conn._write(data)
        return
    tracker = ws.to_client
    if not ws.going_away:
        tracker.feed(data)
        conn._write(data)
        return
    if ws.client_done:
        return
    used = tracker.feed(data, stop_at_boundary=True)
    if used:
        conn._write(data if used == len(data) else data[:used])
    if tracker.at_boundary:
        _close_client(conn, ws)


def go_away(conn: Connection, *, logged: bool = False) -> None:
    """Close the tunnel of ``conn`` for a drain (or, ``logged`` by ``idle``, because it was
    idle): close frames (1001) for a WebSocket, at the next frame boundary of each
    direction; other tunnels are closed at once (FIN)."""
    up = conn.tunnel
    ws = conn.ws
    if up is None:
        conn.close()
        return
    if ws is None or ws.to_client.broken or ws.to_backend.broken:
        if not logged:
            _log.info("proxy.tunnel_closed_for_drain", peer=conn.peer_ip, websocket=ws is not None)
        _detach(conn, up)
        return
    if ws.going_away:
        return
    ws.going_away = True
    if not logged:
        _log.info("proxy.websocket_going_away", peer=conn.peer_ip, backend=up.backend.address)
    conn.deadline = conn.proxy.now() + CLOSE_WAIT  # cut if the boundaries do not come
    conn.deadline_kind = DEADLINE_LINGER
    if ws.to_client.at_boundary:
        _close_client(conn, ws)
    if ws.to_backend.at_boundary:
        _close_backend(conn, ws)


def _close_client(conn: Connection, ws: WebSocketTunnel) -> None:
    ws.client_done = True
    # not after the backend's half-close: the client got our FIN then (a write would raise)
    if not ws.to_client.close_seen and not conn.tunnel_eof & EOF_BACKEND:
        conn._write(close_frame(GOING_AWAY, masked=False))
    if ws.backend_done:
        _finish(conn)


def _close_backend(conn: Connection, ws: WebSocketTunnel) -> None:
    ws.backend_done = True
    up = conn.tunnel
    # nor towards a backend that got the client's half-close (our FIN) already
    if up is not None and not ws.to_backend.close_seen and not conn.tunnel_eof & EOF_CLIENT:
        up.write(close_frame(GOING_AWAY, masked=True))
    if ws.client_done:
        _finish(conn)


def _finish(conn: Connection) -> None:
    """Both close frames are written: the tunnel ends (the client's side lingers, so that
    its close reply does not meet a reset that could destroy our frame unread)."""
    up = conn.tunnel
    if up is not None:
        _detach(conn, up)


def _detach(conn: Connection, up: UpstreamProtocol) -> None:
    conn.tunnel = None
    up.tunnel = None
    up.close()
    conn.linger_close()
