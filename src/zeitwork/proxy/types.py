"""The extension seam of the proxy core: what the load balancer and the edge plug in.

Everything here is small and stable; the engine in ``server.py`` calls these hooks on the hot
path, so implementations should answer in microseconds and never block.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from zeitwork.proxy.backends import Pool

Headers = list[tuple[bytes, bytes]]
"""Header list as (name, value) byte pairs; the engine hands policies lower-case names (request
and upstream response headers alike; local answers are expected to use lower-case names too)."""


class _Record:
    """Value semantics for the small records below: equality and repr by their slots.

    They are written out rather than made with ``@dataclass``: the engine builds one or two of
    them per request, and a dataclass's generated ``__init__`` stays interpreted code even in
    the compiled build (about 3 µs a call on a new connection), where this one is native."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()  # in declaration order (repr, equality)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({fields})"

    __hash__ = None  # type: ignore[assignment]  # mutable records: not hashable


class ClientInfo(_Record):
    """Who is asking, per request.

    ``peer_ip`` is the socket peer; ``client_ip`` is the effective client (the left-most
    untrusted address of ``X-Forwarded-For`` when the peer is a trusted proxy, else the peer).
    ``tls`` tells whether the client connection is TLS; ``sni`` is the TLS server name if any.
    """

    __slots__ = ("client_ip", "peer_ip", "sni", "tls")
    _fields = ("peer_ip", "client_ip", "tls", "sni")

    def __init__(
        self, peer_ip: str, client_ip: str, tls: bool = False, sni: str | None = None
    ) -> None:
        self.peer_ip = peer_ip
        self.client_ip = client_ip
        self.tls = tls
        self.sni = sni


class RequestHead(_Record):
    """A parsed request head. ``host`` is lower-case without port; ``path`` excludes the query.

    ``headers`` holds the client's headers (lower-case names) in order; the engine strips
    hop-by-hop headers and adds the forwarding headers after ``on_request`` ran, so a policy
    sees what the client sent. A policy may edit ``headers`` in place (e.g. drop a header).
    """

    __slots__ = (
        "headers",
        "host",
        "http_version",
        "keep_alive",
        "method",
        "path",
        "request_id",
        "target",
    )
    _fields = (
        "method",
        "target",
        "path",
        "host",
        "http_version",
        "headers",
        "keep_alive",
        "request_id",
    )

    def __init__(  # noqa: PLR0917 - positional, as the dataclass it replaces was
        self,
        method: bytes,
        target: bytes,
        path: str,
        host: str,
        http_version: str,
        headers: Headers,
        keep_alive: bool = True,
        request_id: str = "",
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.host = host
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.request_id = request_id


class LocalResponse(_Record):
    """An answer produced by a policy instead of forwarding (429, 308, CORS preflight, ...).

    ``headers`` must not contain Content-Length or Connection: the engine adds them.
    ``close`` asks the engine to close the client connection after the answer.
    """

    __slots__ = ("body", "close", "headers", "status")
    _fields = ("status", "headers", "body", "close")

    def __init__(
        self,
        status: int,
        headers: Headers | None = None,
        body: bytes = b"",
        close: bool = False,
    ) -> None:
        self.status = status
        self.headers: Headers = [] if headers is None else headers
        self.body = body
        self.close = close


class PendingResponse(_Record):
    """A local answer that needs I/O first (an admin ``/health`` that probes a dependency):
    the engine awaits ``answer()`` and sends its ``LocalResponse``, unless the exchange ended
    meanwhile (the client went, a deadline); it is cancelled with the exchange. Not for the
    data path: each one is a task."""

    __slots__ = ("answer",)
    _fields = ("answer",)

    def __init__(self, answer: Callable[[], Awaitable[LocalResponse]]) -> None:
        self.answer = answer


class RequestPolicy(Protocol):
    """Per-request hooks. ``on_request`` returning a response answers locally (nothing is
    forwarded; a ``PendingResponse`` once its answer is ready); ``None`` forwards.
    ``on_response`` may edit ``headers`` of the upstream response (and of local error
    answers) in place before they are sent to the client."""

    def on_request(
        self, head: RequestHead, client: ClientInfo
    ) -> LocalResponse | PendingResponse | None: ...

    def on_response(
        self, head: RequestHead, client: ClientInfo, status: int, headers: Headers
    ) -> None: ...


class Router(Protocol):
    """Maps a request to the pool of backends that serves it (``None``: no route -> 503)."""

    def resolve(self, host: str, path: str) -> Pool | None: ...


class ConnectionLimiter(Protocol):
    """Admission of client connections (per-address caps, global caps).

    ``acquire`` is called when a connection is accepted; ``False`` closes it at once.
    ``release`` is called exactly once for every accepted connection when it closes.
    """

    def acquire(self, peer_ip: str) -> bool: ...

    def release(self, peer_ip: str) -> None: ...


class Observer(Protocol):
    """Receives one call per finished exchange (metrics); must be cheap.

    ``bytes_in`` counts the request body bytes read from the client, ``bytes_out`` the
    response body bytes relayed from the backend (heads and local answers not included)."""

    def request_done(  # noqa: PLR0917 - positional on the hot path
        self,
        pool: str,
        backend: str,
        status: int,
        upstream_seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None: ...

    def connections_changed(self, delta: int) -> None: ...


class NullPolicy:
    """Forward everything unchanged."""

    def on_request(self, head: RequestHead, client: ClientInfo) -> LocalResponse | None:
        return None

    def on_response(
        self, head: RequestHead, client: ClientInfo, status: int, headers: Headers
    ) -> None:
        return None


class NullRouter:
    """Routes nothing (a listener whose policy answers every request, such as an admin one)."""

    def resolve(self, host: str, path: str) -> Pool | None:
        return None


class NullObserver:
    def request_done(  # noqa: PLR0917 - positional on the hot path
        self,
        pool: str,
        backend: str,
        status: int,
        upstream_seconds: float,
        bytes_in: int,
        bytes_out: int,
    ) -> None:
        return None

    def connections_changed(self, delta: int) -> None:
        return None
