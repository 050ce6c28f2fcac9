"""The data-plane core shared by the load balancer (``lb``) and the edge proxy (``edge``).

asyncio ``Protocol`` classes on uvloop with httptools parsing: HTTP/1.1 keep-alive to clients,
pooled keep-alive connections to backends, bodies streamed both ways (Content-Length and
chunked) with back-pressure, ``Expect: 100-continue`` (answered by the proxy once a backend
is connected), ``Upgrade`` (WebSocket) tunnelled, hop-by-hop headers removed, forwarding
headers set, timeouts, one retry of idempotent requests on another backend, and the
bad-input rules (400/413/414/417/431/501, 408 for slow heads, 502 for garbage from a backend).
Output to clients and backends is queued and written once per event-loop iteration, after
every callback of the iteration ran (``output.OutputFlusher``): a subclass that writes must use
``ClientProtocol._write`` (never the transport directly), so order and close stay right.

The extension seam (stable names; keep old names working if it ever changes)
---------------------------------------------------------------------------
``Proxy(router=..., config=ProxyConfig(...), policy=..., observer=..., limiter=..., trusted=...)``
    The engine. ``await proxy.serve(sock, ssl_context=ctx, ssl_handshake_timeout=10)`` serves
    an already-bound listening socket (``reuse_port_socket(host, port)`` makes one with
    SO_REUSEPORT for worker processes); pass an ``ssl.SSLContext`` (with your own SNI
    callback) to serve HTTPS. ``await proxy.drain(grace)`` stops accepting, lets in-flight
    exchanges finish, closes keep-alive connections and returns how many it had to cut.

``Router.resolve(host, path) -> Pool | None``
    Maps the request to a ``Pool`` of ``Backend`` objects (``None`` -> 503 problem). The LB
    resolves from the operator's route table; the edge returns its single pool.

``RequestPolicy.on_request(head, client) -> LocalResponse | PendingResponse | None``
    Called once per request before routing. Return a ``LocalResponse`` to answer locally
    (429, 308 redirect, CORS preflight, ACME challenge); ``None`` forwards. A
    ``PendingResponse(answer)`` answers with what ``await answer()`` returns, for a local
    answer that needs I/O first (the edge admin's ``/health``; not the data path).
``RequestPolicy.on_response(head, client, status, headers) -> None``
    Called with the rebuilt response header list (lower-case names, hop-by-hop removed,
    before Connection/framing headers are added) for forwarded and local answers; edit the
    list in place (security headers, CORS).

``ClientInfo``: ``peer_ip``, ``client_ip`` (effective: from ``X-Forwarded-For`` only when the
peer is in ``trusted``), ``tls``, ``sni`` (the TLS server name when the TLS layer sets
``ClientProtocol.sni`` before ``connection_made``; else ``None``). ``RequestHead``:
``method``, ``target``, ``path``, ``host`` (lower-case, no port),
``http_version``, ``headers``, ``keep_alive``, ``request_id``.

``ConnectionLimiter.acquire(peer_ip) -> bool`` / ``release(peer_ip)``: per-connection admission.
``Observer.request_done(pool, backend, status, upstream_seconds, bytes_in, bytes_out)`` and
``connections_changed(delta)``: metrics hooks.

Subclassing: ``Proxy`` (``protocol_factory``), ``ClientProtocol`` (``connection_made``,
``data_received``, ``connection_lost``, ``_send_local`` for rewriting local error answers),
``Backend`` and ``Pool`` may be subclassed; these names stay stable, and the classes allow
interpreted subclasses in the optional mypyc build (``hatch_build.py``).

Pure parts: ``balancing`` (round-robin, least-connections, ip-hash with consistent hashing),
``health`` (``CheckSpec``: an http / tcp / none check; rise/fall thresholds, passive
ejection with back-off), ``headers``. ``checker.HealthChecker`` runs each backend's
``Backend.check`` on its own interval.
"""

from __future__ import annotations

from zeitwork.proxy import client as _client
from zeitwork.proxy.backends import Backend, Pool, parse_address
from zeitwork.proxy.balancing import ALGORITHMS, AlgorithmName, make_balancer
from zeitwork.proxy.config import ProxyConfig
from zeitwork.proxy.engine import Proxy, reuse_port_socket
from zeitwork.proxy.headers import TrustedProxies, parse_networks
from zeitwork.proxy.health import ActiveHealth, EjectionPolicy, OutlierDetector
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


def core_compiled() -> bool:
    """Whether the proxy core runs as mypyc-compiled extension modules (``hatch_build.py``)."""
    return (_client.__file__ or "").endswith((".so", ".pyd"))


__all__ = [
    "ALGORITHMS",
    "ActiveHealth",
    "AlgorithmName",
    "Backend",
    "ClientInfo",
    "ConnectionLimiter",
    "EjectionPolicy",
    "Headers",
    "LocalResponse",
    "NullObserver",
    "NullPolicy",
    "Observer",
    "OutlierDetector",
    "Pool",
    "Proxy",
    "ProxyConfig",
    "RequestHead",
    "RequestPolicy",
    "Router",
    "TrustedProxies",
    "core_compiled",
    "make_balancer",
    "parse_address",
    "parse_networks",
    "reuse_port_socket",
]
