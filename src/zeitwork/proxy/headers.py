"""Header rules: hop-by-hop removal, forwarding headers, trusted proxies, local answers.

Pure functions over byte headers; the engine calls them once per request/response.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from itertools import count

from zeitwork.core import problems
from zeitwork.proxy.types import Headers

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the proxy itself; from an untrusted peer they are dropped before forwarding.
FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-real-ip",
        b"forwarded",
    }
)

MAX_HEADER_BYTES = 64 * 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str | Iterable[str]) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` -> networks; raises ValueError naming the bad entry."""
    items = text.split(",") if isinstance(text, str) else list(text)
    networks: list[Network] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"not an IP address or CIDR: {item!r}") from exc
    return tuple(networks)


class TrustedProxies:
    """Answers "is this peer a trusted proxy?" with a small cache."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, ip: str) -> bool:
        if not self.networks:
            return False
        known = self._cache.get(ip)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            result = False
        else:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            result = any(address in net for net in self.networks)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[ip] = result
        return result

    def client_ip(self, peer_ip: str, forwarded_for: bytes | None) -> str:
        """The effective client: walk ``X-Forwarded-For`` from the right while the hops are
        trusted; the first untrusted (or the left-most) address is the client."""
        if forwarded_for is None or not self.trusts(peer_ip):
            return peer_ip
        hops = [h.strip() for h in forwarded_for.decode("latin-1").split(",")]
        candidate = peer_ip
        for hop in reversed(hops):
            if not hop:
                continue
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break
            candidate = hop
            if not self.trusts(hop):
                break
        return candidate


# Small bounded caches for the per-request string work: the same few header names, Host
# values and Connection values arrive over and over. A cache that fills up is cleared.
_CACHE_MAX = 512
_lower_names: dict[bytes, bytes] = {}
_hosts: dict[bytes, str] = {}
_tokens: dict[bytes, frozenset[bytes]] = {}


def lower_name(name: bytes) -> bytes:
    """``name.lower()``, remembered for the names seen most (one dict lookup, no copy)."""
    known = _lower_names.get(name)
    if known is not None:
        return known
    lowered = name.lower()
    if len(name) <= 64:
        if len(_lower_names) >= _CACHE_MAX:
            _lower_names.clear()
        _lower_names[name] = lowered
    return lowered


def split_host(value: bytes) -> str:
    """Host header -> lower-case host without port (IPv6 literals keep their brackets)."""
    known = _hosts.get(value)
    if known is not None:
        return known
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        host = text[: end + 1] if end > 0 else text
    else:
        colon = text.rfind(":")
        host = text[:colon] if colon >= 0 else text
    if len(value) <= 255:
        if len(_hosts) >= _CACHE_MAX:
            _hosts.clear()
        _hosts[value] = host
    return host


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The lower-case tokens of Connection header values."""
    tokens: set[bytes] = set()
    for value in values:
        for raw in value.split(b","):
            token = raw.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def connection_value_tokens(value: bytes) -> frozenset[bytes]:
    """``connection_tokens`` of one header value, remembered for the common values."""
    known = _tokens.get(value)
    if known is not None:
        return known
    tokens = connection_tokens((value,))
    if len(value) <= 64:
        if len(_tokens) >= _CACHE_MAX:
            _tokens.clear()
        _tokens[value] = tokens
    return tokens


_REQUEST_ID_OK = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID_OK.match(value) is not None


def forwarded_node(ip: str, port: int = 0) -> bytes:
    """The ``for=`` parameter of an RFC 7239 ``Forwarded`` element naming ``ip`` (and
    ``port`` when known): ``for=192.0.2.1``, ``for="192.0.2.1:443"``, ``for="[2001:db8::1]"``.
    An empty address (a Unix socket peer) is ``for=unknown``."""
    if not ip:
        return b"for=unknown"
    v6 = ":" in ip
    if not port and not v6:
        return b"for=%s" % ip.encode()
    node = f"[{ip}]" if v6 else ip
    if port:
        node = f"{node}:{port}"
    return b'for="%s"' % node.encode()


class RequestIds:
    """Cheap unique request ids: a random per-process prefix plus a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(6).hex()
        self._prefix_b = self._prefix.encode()
        self._counter = count(1)

    def next(self) -> str:
        return self.next_bytes().decode("ascii")

    def next_bytes(self) -> bytes:
        return b"%s%010x" % (self._prefix_b, next(self._counter))


_status_lines: dict[int, bytes] = {}


def status_line(status: int) -> bytes:
    """The status line of a response, ``HTTP/1.1 200 OK`` and CRLF (made once per code)."""
    line = _status_lines.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode())
        if 100 <= status <= 999:  # what httptools accepts; bounded
            _status_lines[status] = line
    return line


def problem_body(status: int, detail: str) -> bytes:
    """An RFC 9457 body of the status's problem type from the one vocabulary
    (``core.problems``), the same types the operator's API answers with."""
    kind = problems.for_status(status)
    return json.dumps(
        {"type": kind.uri, "title": kind.title, "status": status, "detail": detail},
        separators=(",", ":"),
    ).encode()


def serialize_response(
    status: int, headers: Headers, body: bytes, *, close: bool, head_only: bool = False
) -> bytes:
    """A complete HTTP/1.1 response with Content-Length and rebuilt Connection header."""
    parts = [status_line(status)]
    for name, value in headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(b"content-length: %d\r\n" % len(body))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    if body and not head_only:
        parts.append(body)
    return b"".join(parts)
