"""The records the proxy core's modules share, below all of them: ``Exchange`` (one request
and its response), ``WebSocketTunnel`` (both directions of an upgraded WebSocket), and
``UpstreamLink``, what an exchange holds of the backend connection under it.

``UpstreamLink`` is a Protocol so that this module need not import ``upstream`` (the backend
side names ``Exchange``); the calls made through it are the request body's writes and the
aborts, not the response path.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from zeitwork.proxy.config import DEADLINE_FIRST_BYTE, ProxyConfig
from zeitwork.proxy.websocket import FrameTracker

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Backend, Pool
    from zeitwork.proxy.types import ClientInfo, RequestHead


class UpstreamLink(Protocol):
    """The backend connection carrying an exchange (``upstream.UpstreamProtocol``, or an h2c
    stream, ``h2c_stream.H2UpstreamStream``), as the exchange's client side uses it."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    @property
    def closed(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: list[bytes]) -> None: ...

    def abort(self) -> None: ...


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
        "holds_tunnel",
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
        "websocket",
    )

    def __init__(self, head: RequestHead, client: ClientInfo) -> None:
        self.head = head
        self.client = client
        self.pool: Pool | None = None
        self.backend: Backend | None = None
        self.failed: Backend | None = None
        self.upstream: UpstreamLink | None = None
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
        self.websocket = False  # an upgrade to WebSocket (framing followed in the tunnel)
        self.holds_tunnel = False  # an upgrade holding a place in its pool's tunnel count
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


def stall_timeout(config: ProxyConfig, ex: Exchange | None, kind: int) -> float:
    """How long ``ex`` may stall at the stage ``kind`` stands for: once its request is
    forwarded whole (waiting for the response head, and between the response's reads) its
    route's response idle timeout when the route has one, else the engine's first-byte
    (``DEADLINE_FIRST_BYTE``) or stream idle timeout."""
    if ex is not None and (ex.body_done or ex.response_started):
        pool = ex.pool
        if pool is not None and pool.response_idle_timeout:
            return pool.response_idle_timeout
    return config.first_byte_timeout if kind == DEADLINE_FIRST_BYTE else config.stream_idle_timeout


class WebSocketTunnel:
    """Both directions of one WebSocket tunnel, followed frame by frame, and its close."""

    __slots__ = ("backend_done", "client_done", "going_away", "to_backend", "to_client")

    def __init__(self) -> None:
        self.to_client = FrameTracker()  # what the backend sends
        self.to_backend = FrameTracker()  # what the client sends
        self.going_away = False
        self.client_done = False  # the client got its close frame (or the backend's own)
        self.backend_done = False  # the same towards the backend
