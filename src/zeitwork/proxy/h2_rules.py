"""The pure rules of HTTP/2 at the proxy: a stream's request as HTTP/1.1 fields, a backend's
HTTP/1.1 response headers as an HTTP/2 header list, the limits, and the rapid-reset budget.

No I/O here: ``http2`` drives the ``h2`` connection and calls these (unit-tested on their own
in ``tests/unit/proxy/test_http2_rules.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from zeitwork.proxy.headers import HOP_BY_HOP, MAX_HEADER_BYTES, connection_value_tokens
from zeitwork.proxy.types import Headers

# RFC 9113 8.2.2: connection-specific fields never appear in HTTP/2 (``te`` only as
# ``trailers``); also what the proxy rebuilds itself on the way to the backend
_NOT_FORWARDED = HOP_BY_HOP | {b"host", b"transfer-encoding", b"upgrade", b"content-length"}
_RESPONSE_DROPPED = HOP_BY_HOP | {b"transfer-encoding", b"upgrade"}
# what a header value may hold (HTAB, visible ASCII and space, obs-text) and a request
# target (visible ASCII): the bytes the core's HTTP/1.1 parser (llhttp) accepts there
_VALUE_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_TARGET_BYTES = bytes(range(0x21, 0x7F))
# the methods llhttp knows (CONNECT apart): over HTTP/1.1 any other is refused with 400
_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE OPTIONS TRACE PATCH COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PURGE MKCALENDAR LINK UNLINK SOURCE QUERY".split()
)
# RFC 9113 8.2.2: these make a request malformed (``te`` unless it is ``trailers``)
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_PSEUDO = frozenset({b":method", b":path", b":authority", b":scheme"})
# RFC 9110 5.1 token characters, lower-case only (RFC 9113 8.2.1)
_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~")


@dataclass(frozen=True, slots=True)
class H2Limits:
    """What one HTTP/2 connection allows (``EDGE_H2_*``).

    - ``max_concurrent_streams``: advertised in SETTINGS; a stream past it is refused with
      RST_STREAM(REFUSED_STREAM) (past twice it, h2 ends the connection: PROTOCOL_ERROR);
    - ``max_header_list_size``: advertised, and the cap on a request's decoded header bytes
      (HPACK bomb: h2's decoder stops at it, then this module's count does);
    - ``initial_window_size``: each stream's receive window; ``connection_window`` the
      connection's; ``buffer_limit``: response bytes held per stream for a client whose
      window is shut before the backend's reading pauses;
    - ``max_resets`` RST_STREAM frames from the client in ``reset_interval`` seconds, past
      which the connection gets GOAWAY(ENHANCE_YOUR_CALM) (CVE-2023-44487).
    """

    max_concurrent_streams: int = 100
    max_header_list_size: int = MAX_HEADER_BYTES
    initial_window_size: int = 1024 * 1024
    connection_window: int = 16 * 1024 * 1024
    buffer_limit: int = 256 * 1024
    max_resets: int = 200
    reset_interval: float = 10.0


class H2RequestError(Exception):
    """A stream's request that cannot be forwarded: answered with ``status`` on the stream."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class H2Request:
    """A stream's request as the proxy core takes it: ``method``, origin-form ``target``, and
    ``fields`` (lower-case names, ``host`` first) as an HTTP/1.1 parser would have read them;
    ``chunked``: the body has no Content-Length and goes to the backend chunked."""

    method: bytes
    target: bytes
    fields: Headers
    chunked: bool


def _bad_value(value: bytes) -> bool:
    """A control character other than HTAB (what the core's HTTP/1.1 parser refuses)."""
    return bool(value.translate(None, _VALUE_BYTES))


def request_fields(headers: Headers, *, has_body: bool) -> H2Request:
    """The request of a stream (``headers`` as h2 decoded them, bytes), checked and made into
    the fields an HTTP/1.1 request would carry.

    The fields are checked here (h2's own checks are off, as they end the whole connection
    where RFC 9113 8.1.1 asks for a stream error): lower-case token names, pseudo-headers
    once each and first, no connection-specific fields, no control characters but HTAB in a
    value, no surrounding whitespace, a method the core's HTTP/1.1 parser knows, a target of
    visible ASCII. ``:authority`` becomes Host (a Host field that names another authority is
    refused), ``cookie`` fields are joined (RFC 9113 8.2.3), ``te: trailers`` is dropped, and
    a body without Content-Length is sent chunked. The proxy core then builds the exchange
    from the result (``http1.forwardable_request``), so the request meets every rule an
    HTTP/1.1 request meets."""
    method = path = authority = host = b""
    scheme = b""
    length: bytes | None = None
    fields: Headers = [(b"host", b"")]
    cookies: list[bytes] = []
    size = 0
    seen: set[bytes] = set()
    regular = False
    for name, value in headers:
        size += len(name) + len(value) + 32  # RFC 9113 6.5.2's per-field overhead
        if size > MAX_HEADER_BYTES:
            raise H2RequestError(431, "request headers exceed 64 KiB")
        if _bad_value(value):
            raise H2RequestError(400, "invalid byte in a header value")
        if value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
            raise H2RequestError(400, "whitespace around a header value")
        if name[:1] == b":":
            if regular or name in seen or name not in _PSEUDO:
                raise H2RequestError(400, "invalid pseudo-header")
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":scheme":
                scheme = value
            continue
        regular = True
        if not name or not _NAME_BYTES.issuperset(name):
            raise H2RequestError(400, "invalid header name")
        if name in _CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
            raise H2RequestError(400, "a connection-specific header in an HTTP/2 request")
        if name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            host = value
        elif name == b"content-length":
            length = value
        elif name not in _NOT_FORWARDED:
            fields.append((name, value))
    if method == b"CONNECT":
        raise H2RequestError(405, "CONNECT is not supported")
    if not method or not path or not scheme:
        raise H2RequestError(400, "missing :method, :scheme or :path")
    if method not in _METHODS or path.translate(None, _TARGET_BYTES):
        raise H2RequestError(400, "invalid :method or :path")
    if authority and host and authority.lower() != host.lower():
        raise H2RequestError(400, "the Host header does not match :authority")
    authority = authority or host
    if not authority:
        raise H2RequestError(400, "missing :authority")
    fields[0] = (b"host", authority)
    if cookies:
        fields.append((b"cookie", b"; ".join(cookies)))
    chunked = False
    if length is not None:
        fields.append((b"content-length", length))
    elif has_body:
        chunked = True
        fields.append((b"transfer-encoding", b"chunked"))
    return H2Request(method=method, target=path, fields=fields, chunked=chunked)


def response_headers(upstream: Headers) -> Headers:
    """A backend's HTTP/1.1 response fields as HTTP/2 fields: names lower-cased, hop-by-hop
    fields and those the Connection header names dropped, Content-Length kept, whitespace
    after a value dropped (the HTTP/1.1 parser keeps it; RFC 9113 8.2.1 forbids it)."""
    named: frozenset[bytes] = frozenset()
    for name, value in upstream:
        if name.lower() == b"connection":
            named |= connection_value_tokens(value)
    out: Headers = []
    for name, value in upstream:
        lname = name.lower()
        if lname in _RESPONSE_DROPPED or lname in named:
            continue
        out.append((lname, value.rstrip(b" \t") if value[-1:] in (b" ", b"\t") else value))
    return out


class ResetBudget:
    """At most ``limit`` events in any ``interval`` seconds (a fixed window, restarted by the
    first event after it ends): ``hit`` is False once the budget is spent."""

    __slots__ = ("count", "interval", "limit", "started")

    def __init__(self, *, limit: int, interval: float) -> None:
        self.limit = limit
        self.interval = interval
        self.started = 0.0
        self.count = 0

    def hit(self, now: float) -> bool:
        if self.count == 0 or now - self.started >= self.interval:
            self.started = now
            self.count = 0
        self.count += 1
        return self.count <= self.limit
