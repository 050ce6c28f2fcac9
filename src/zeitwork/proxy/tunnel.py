"""Upgraded connections (WebSocket and other ``Upgrade`` protocols): once the backend
answers 101 the client connection and the backend connection carry raw bytes both ways, each
side's reads written to the other (``ClientProtocol.tunnel_data`` and
``UpstreamProtocol.data_received``), renewed by activity up to ``tunnel_idle_timeout``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from zeitwork.proxy.config import DEADLINE_TUNNEL, PAUSE_WAIT
from zeitwork.proxy.exchange import release_backend

if TYPE_CHECKING:
    from zeitwork.proxy.client import ClientProtocol
    from zeitwork.proxy.upstream import UpstreamProtocol

_log = structlog.get_logger("zeitwork.proxy")


def upgrade_requested(conn: ClientProtocol, rest: bytes) -> None:
    """The parser ended an upgrade request; ``rest`` is what the client sent after it."""
    # the upgrade request is the last one parsed (its message is already complete)
    ex = conn.queue[-1] if conn.queue else conn.ex
    conn.parsing = None
    if ex is None:
        conn.close()
        return
    ex.tunnel_buf = rest
    # no more HTTP from this client until the backend accepts or refuses the upgrade
    conn.pause_reading_for(PAUSE_WAIT)
    if ex.upstream is not None and ex.sent_head and rest:
        ex.upstream.write(rest)
        ex.tunnel_buf = b""


def upgraded(conn: ClientProtocol, up: UpstreamProtocol, rest: bytes) -> None:
    """The backend answered 101: both connections become a tunnel (``rest``: what the
    backend sent after its head)."""
    ex = conn.ex
    if ex is None or ex.status != 101 or conn.transport is None:
        up.abort()
        conn.abort()
        return
    # both sides now carry raw bytes
    ex.finished = True
    release_backend(conn, ex, status=101)
    up.ex = None
    up.client = None
    up.tunnel = conn
    conn.tunnel = up
    conn.ex = None
    conn.queue.clear()
    conn.deadline = conn.proxy.now() + conn.proxy.config.tunnel_idle_timeout
    conn.deadline_kind = DEADLINE_TUNNEL
    if rest:
        conn._write(rest)
    if ex.tunnel_buf:
        up.write(ex.tunnel_buf)
        ex.tunnel_buf = b""
    conn.paused = 0
    conn.transport.resume_reading()


def idle(conn: ClientProtocol) -> None:
    """Nothing moved either way for ``tunnel_idle_timeout``: both sides are cut."""
    _log.info("proxy.tunnel_idle", peer=conn.peer_ip)
    conn.abort()
