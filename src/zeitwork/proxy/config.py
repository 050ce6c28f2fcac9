"""The proxy core's settings and the small vocabularies its modules share: the engine's limits
and timeouts (``ProxyConfig``), what a connection's deadline stands for, and why its reading is
paused."""

from __future__ import annotations

from dataclasses import dataclass

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
BUFFER_LIMIT = 256 * 1024  # request body bytes held while the upstream is not attached yet

# reasons for pausing the client's reading (bit flags of ClientProtocol.paused)
PAUSE_BUFFER = 1  # the request body is buffered while no backend connection is attached
PAUSE_UPSTREAM = 2  # the backend takes the request body slower than the client sends it
PAUSE_QUEUE = 4  # a pipelined request waits for the one before it
PAUSE_WAIT = 8  # an upgrade request waits for the backend's answer

# what a connection's deadline currently stands for (ClientProtocol.deadline_kind)
DEADLINE_IDLE = 0  # keep-alive between requests: closed quietly
DEADLINE_HEAD = 1  # reading a request head: 408
DEADLINE_STREAM = 2  # an exchange moving bytes: renewed while any byte moves either way
DEADLINE_TUNNEL = 3  # an upgraded connection: renewed while any byte moves either way
DEADLINE_LINGER = 4  # closing after an error answer: aborted
DEADLINE_FIRST_BYTE = 5  # the request is forwarded whole, the response head has not begun: 504
DEADLINE_DRAIN = 6  # a tunnel of a draining backend: closed then (WebSocket: close frame 1001)


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
    - ``tunnel_idle_timeout``: the same for an upgraded connection (WebSocket);
    - ``tunnel_drain_timeout``: how long an upgraded connection runs on once its backend
      drained (left the route table), before it is closed (a WebSocket with close code 1001,
      so its client reconnects to the new release); keep it below the time a release lets a
      replaced instance run (its ``drain_timeout``), so the close reaches the client first.
    """

    connect_timeout: float = 3.0
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    first_byte_timeout: float = 60.0
    stream_idle_timeout: float = 60.0
    tunnel_idle_timeout: float = 3600.0
    tunnel_drain_timeout: float = 25.0
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
