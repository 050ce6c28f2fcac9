"""HTTP/1.1 framing of the proxy core, both directions, as pure functions of parsed heads.

``forwardable_request`` turns a client's parsed request head into an ``Exchange``: one pass
over its header list classifies each header (routing, framing, hop-by-hop, forwarding), the
smuggling and bad-input rules refuse with ``RequestError`` (400/413/417/431/501), and the head
sent to the backend is built in the same pass (forwarding headers for this hop, one framing).
``response_head`` rebuilds a backend's response head for the client (hop-by-hop headers
dropped, Connection and framing chosen, the policy's response hook). The client protocol
(``client.ClientProtocol``) feeds httptools and calls these; nothing here does I/O.
"""

from __future__ import annotations

import httptools

from zeitwork.proxy.headers import (
    FORWARDING,
    HOP_BY_HOP,
    RequestIds,
    TrustedProxies,
    connection_value_tokens,
    forwarded_node,
    lower_name,
    split_host,
    status_line,
    valid_request_id,
)
from zeitwork.proxy.state import Exchange
from zeitwork.proxy.types import ClientInfo, Headers, RequestHead, RequestPolicy

_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_CONNECTION_KEYWORDS = frozenset({b"keep-alive", b"close", b"upgrade"})

# request header name -> what the single pass over the head does with it
_K_HOST, _K_LENGTH, _K_TE, _K_CONNECTION, _K_UPGRADE, _K_EXPECT, _K_REQUEST_ID = range(1, 8)
_K_XFF, _K_XFP, _K_XFH, _K_FORWARDED, _K_DROP = range(8, 13)
_REQUEST_KINDS: dict[bytes, int] = {
    **{name: _K_DROP for name in HOP_BY_HOP},
    **{name: _K_FORWARDED for name in FORWARDING},
    b"host": _K_HOST,
    b"content-length": _K_LENGTH,
    b"transfer-encoding": _K_TE,
    b"connection": _K_CONNECTION,
    b"upgrade": _K_UPGRADE,
    b"expect": _K_EXPECT,
    b"x-request-id": _K_REQUEST_ID,
    b"x-forwarded-for": _K_XFF,
    b"x-forwarded-proto": _K_XFP,
    b"x-forwarded-host": _K_XFH,
    b"x-real-ip": _K_DROP,
}
# response header name (as sent, or lower-cased) -> kind; unknown names pass through
_R_PASS, _R_LENGTH, _R_TE, _R_CONNECTION, _R_UPGRADE, _R_DROP, _R_REQUEST_ID = range(7)
_RESPONSE_KINDS: dict[bytes, int] = {
    **{name: _R_DROP for name in HOP_BY_HOP},
    b"content-length": _R_LENGTH,
    b"transfer-encoding": _R_TE,
    b"connection": _R_CONNECTION,
    b"upgrade": _R_UPGRADE,
    b"x-request-id": _R_REQUEST_ID,
}


class RequestError(Exception):
    """A request the proxy refuses: answered ``status`` with a one-line ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def lf_request_line(data: bytes) -> bytes:
    """``data`` with a CR put before the LF that ends its first line when that LF is bare
    (RFC 9112 2.2 lets a recipient accept it; llhttp refuses it on the request line)."""
    nl = data.find(b"\n")
    if nl > 0 and data[nl - 1] != 13:
        return data[:nl] + b"\r" + data[nl:]
    return data


def absolute_target(url: bytes) -> tuple[bytes, bytes]:
    """``http://a.example:8080/x?y`` -> (``a.example:8080``, ``/x?y``); raises RequestError for
    an empty authority or one with user information."""
    rest = url[url.find(b"://") + 3 :]
    end = len(rest)
    for sep in (b"/", b"?"):
        at = rest.find(sep)
        if 0 <= at < end:
            end = at
    authority = rest[:end]
    if not authority or b"@" in authority or b'"' in authority or b"\\" in authority:
        raise RequestError(400, "invalid authority in the request target")
    path = rest[end:]
    if not path:
        path = b"/"
    elif path[:1] == b"?":
        path = b"/" + path
    return authority, path


def forwardable_request(
    method: bytes,
    version: str,
    url: bytes,
    headers: Headers,
    keep_alive: bool,
    *,
    trusted: bool,
    peer_ip: str,
    peer_b: bytes,
    client_b: bytes,
    info: ClientInfo,
    node: bytes,
    scheme: bytes,
    max_body: int,
    proxies: TrustedProxies,
    request_ids: RequestIds,
) -> Exchange:
    """The exchange for a parsed request head (its head for the backend built), or
    ``RequestError``.

    ``trusted``: the peer is a trusted proxy (its forwarding headers are kept); ``peer_b`` and
    ``client_b`` the peer's address as bytes; ``info`` the connection's ``ClientInfo``;
    ``node`` the RFC 7239 ``for=`` node of the peer; ``scheme`` the connection's."""
    conn_info = info
    # the request line and Host go first, once the target is known
    parts: list[bytes] = [b"", b""]
    host = b""
    host_count = 0
    content_length = -1
    te: bytes | None = None
    expect = False
    xff: bytes | None = None
    xfp: bytes | None = None
    xfh: bytes | None = None
    fwd: bytes | None = None
    request_id: bytes | None = None
    tokens: frozenset[bytes] | None = None
    upgrade_value: bytes | None = None
    kinds = _REQUEST_KINDS
    for name, value in headers:
        kind = kinds.get(name)
        if kind is None:
            parts.append(b"%s: %s\r\n" % (name, value))
        elif kind == _K_HOST:
            if b'"' in value or b"\\" in value:
                raise RequestError(400, "invalid Host header")
            host = value
            host_count += 1
        elif kind == _K_LENGTH:
            if not value.isdigit():
                raise RequestError(400, "invalid Content-Length")
            length = int(value)
            if content_length >= 0 and length != content_length:
                raise RequestError(400, "conflicting Content-Length headers")
            content_length = length
        elif kind == _K_TE:
            te = value if te is None else te + b"," + value
        elif kind == _K_CONNECTION:
            found = connection_value_tokens(value)
            tokens = found if tokens is None else tokens | found
        elif kind == _K_UPGRADE:
            upgrade_value = value
        elif kind == _K_EXPECT:
            if value.lower() != b"100-continue":
                raise RequestError(417, "unsupported Expect")
            expect = True
        elif kind == _K_REQUEST_ID:
            request_id = value
        elif trusted:
            if kind == _K_XFF:
                xff = value if xff is None else xff + b", " + value
            elif kind == _K_XFP:
                xfp = value
            elif kind == _K_XFH:
                if b'"' in value or b"\\" in value:
                    raise RequestError(400, "invalid X-Forwarded-Host header")
                xfh = value
            elif name == b"forwarded":
                fwd = value if fwd is None else fwd + b", " + value
            elif kind == _K_FORWARDED:
                parts.append(b"%s: %s\r\n" % (name, value))
        # hop-by-hop headers and untrusted forwarding headers are dropped
    if host_count > 1:
        raise RequestError(400, "more than one Host header")
    chunked = False
    if te is not None:
        if content_length >= 0:
            raise RequestError(400, "both Content-Length and Transfer-Encoding")
        if te.strip().lower() != b"chunked":
            raise RequestError(
                400 if b"chunked" in te.lower() else 501, "unsupported Transfer-Encoding"
            )
        chunked = True
    if max_body and content_length > max_body:
        raise RequestError(413, f"request body over the {max_body} byte limit")
    if method == b"CONNECT":
        raise RequestError(405, "CONNECT is not supported")
    if b"#" in url:
        raise RequestError(400, "a fragment (#) is not allowed in the request target")
    if url[:1] != b"/":
        if url[:8].lower().startswith((b"http://", b"https://")):
            # absolute-form (RFC 9112 3.2.2): its authority is the host; origin-form on
            authority, url = absolute_target(url)
            if host and split_host(host) != split_host(authority):
                raise RequestError(400, "the Host header does not match the request target")
            host = authority
        elif not (url == b"*" and method == b"OPTIONS"):
            raise RequestError(400, "invalid request target")
    if not host:
        # HTTP/1.0 without Host too: nothing to route by, and never forwarded without one
        raise RequestError(400, "missing Host header")
    parts[1] = b"host: %s\r\n" % host
    q = url.find(b"?")
    path = (url if q < 0 else url[:q]).decode("latin-1")
    # llhttp sets its upgrade flag only after this callback: decide here, the same way
    upgrade = upgrade_value is not None and tokens is not None and b"upgrade" in tokens
    if tokens is not None:
        tokens -= _CONNECTION_KEYWORDS
        if tokens:
            parts = [p for p in parts if p.split(b":", 1)[0] not in tokens]
    if request_id is None or not valid_request_id(request_id):
        request_id = request_ids.next_bytes()
    if xff is not None:
        client_ip = proxies.client_ip(peer_ip, xff)
        if client_ip != info.client_ip:
            info = ClientInfo(peer_ip=peer_ip, client_ip=client_ip, tls=info.tls, sni=info.sni)
        parts.append(b"x-forwarded-for: %s, %s\r\n" % (xff, peer_b))
    else:
        parts.append(b"x-forwarded-for: %s\r\n" % peer_b)
    host_name = split_host(host) if host else ""
    # RFC 7239: a trusted hop's elements are kept and this hop's is appended; otherwise
    # one element names the client as the X-Forwarded-* headers do
    if fwd is not None:
        fwd_first, fwd_node, fwd_host, fwd_proto = fwd + b", ", node, host, scheme
    else:
        fwd_first = b""
        fwd_node = node if info is conn_info else forwarded_node(info.client_ip)
        fwd_host = xfh if xfh is not None else host
        fwd_proto = xfp if xfp is not None else scheme
    parts.append(
        b"x-forwarded-proto: %s\r\nx-forwarded-host: %s\r\nx-real-ip: %s\r\n"
        b'forwarded: %s%s;host="%s";proto=%s\r\nx-request-id: %s\r\n'
        % (
            xfp if xfp is not None else scheme,
            xfh if xfh is not None else host_name.encode("latin-1"),
            info.client_ip.encode() if info is not conn_info else client_b,
            fwd_first,
            fwd_node,
            fwd_host,
            fwd_proto,
            request_id,
        )
    )
    if upgrade:
        parts.append(b"connection: upgrade\r\nupgrade: %s\r\n\r\n" % upgrade_value)
    elif chunked:
        parts.append(b"transfer-encoding: chunked\r\n\r\n")
    elif content_length > 0:
        parts.append(b"content-length: %d\r\n\r\n" % content_length)
    elif method in _BODY_METHODS:
        parts.append(b"content-length: 0\r\n\r\n")
    else:
        parts.append(b"\r\n")
    parts[0] = b"%s %s HTTP/1.1\r\n" % (method, url)
    head = RequestHead(
        method,
        url,
        path,
        host_name,
        version,
        headers,
        keep_alive,
        request_id.decode("latin-1"),
    )
    ex = Exchange(head, info)
    ex.request_id = request_id
    ex.head_bytes = b"".join(parts)
    ex.chunked = chunked
    if content_length > 0:
        ex.content_length = content_length
    ex.body_done = upgrade or (not chunked and content_length <= 0)
    ex.expect = expect and not ex.body_done
    ex.upgrade = upgrade
    if upgrade and upgrade_value is not None:
        ex.websocket = b"websocket" in upgrade_value.lower()
    return ex


def response_head(
    ex: Exchange,
    upstream_headers: Headers,
    status: int,
    *,
    closing: bool,
    response_request_id: bool,
    policy: RequestPolicy | None,
) -> bytes:
    """The client's response head rebuilt from the backend's (``upstream_headers`` as sent):
    hop-by-hop headers dropped, framing and Connection chosen, ``policy.on_response`` run.
    Marks ``ex`` as started, with its response framing; ``closing``: the connection closes
    after this exchange whatever the request asked (a drain, a pending error answer).

    A 101 the request did not ask for is ``httptools.HttpParserError`` (the backend's 502)."""
    head = ex.head

    headers: Headers = []
    tokens: frozenset[bytes] | None = None
    length = -1
    upstream_chunked = False
    has_rid = False
    upgrade_value: bytes | None = None
    kinds = _RESPONSE_KINDS
    for name, value in upstream_headers:
        lname = lower_name(name)
        kind = kinds.get(lname)
        if kind is None:
            headers.append((lname, value))
        elif kind == _R_LENGTH:
            length = int(value) if value.isdigit() else -1
            headers.append((lname, value))
        elif kind == _R_TE:
            upstream_chunked = True
        elif kind == _R_CONNECTION:
            found = connection_value_tokens(value)
            tokens = found if tokens is None else tokens | found
        elif kind == _R_UPGRADE:
            upgrade_value = value
        elif kind == _R_REQUEST_ID:
            has_rid = True
            headers.append((lname, value))
    if tokens is not None:
        tokens -= _CONNECTION_KEYWORDS
        if tokens:
            headers = [h for h in headers if h[0] not in tokens]
    if status == 101 and (not ex.upgrade or upgrade_value is None):
        raise httptools.HttpParserError("unexpected 101 from the backend")
    ex.response_started = True
    ex.status = status
    close = ex.close_after or not head.keep_alive or closing or (ex.upgrade and status != 101)
    if status == 101 and upgrade_value is not None:
        if b"websocket" not in upgrade_value.lower():
            ex.websocket = False  # the backend switched to something else
        headers.append((b"connection", b"upgrade"))
        headers.append((b"upgrade", upgrade_value))
    elif ex.head_only or status in (204, 304) or (length >= 0 and not upstream_chunked):
        pass
    else:
        if not upstream_chunked:
            ex.upstream_until_close = True  # the body ends when the backend closes
        if head.http_version == "1.1":
            ex.resp_chunked = True
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            ex.resp_until_close = True
            close = True
    if not has_rid and response_request_id:
        headers.append((b"x-request-id", ex.request_id))
    if policy is not None:
        policy.on_response(head, ex.client, status, headers)
    if status != 101:
        if close:
            ex.close_after = True
            headers.append((b"connection", b"close"))
        elif head.http_version == "1.0":
            headers.append((b"connection", b"keep-alive"))
    out = [status_line(status)]
    for name, value in headers:
        out.append(b"%s: %s\r\n" % (name, value))
    out.append(b"\r\n")
    return b"".join(out)
