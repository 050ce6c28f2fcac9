"""Which address is the client: the socket peer, unless the peer is a trusted proxy.

A connection from an address inside ``EDGE_TRUSTED_PROXIES`` may tell the edge the real
client, through ``X-Forwarded-For`` or a PROXY protocol header (v1 text or v2 binary) at the
start of the connection. From any other peer both are ignored: a spoofed
``X-Forwarded-For`` changes nothing.

``X-Forwarded-For`` is resolved by the shared proxy core
(``zeitwork.proxy.headers.TrustedProxies.client_ip``: the rightmost address that is not
itself a trusted proxy wins; everything left of it could have been written by the client).
This module parses the PROXY protocol header.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# --- PROXY protocol ---------------------------------------------------------------------

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V1_MAX = 107


class ProxyProtocolError(ValueError):
    """The connection started with a malformed PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int  # bytes consumed from the start of the stream
    source: str | None  # None for LOCAL / UNKNOWN (use the peer address)


def might_be_proxy_header(data: bytes) -> bool:
    """True when ``data`` is (a prefix of) a PROXY v1 or v2 header."""
    n = min(len(data), len(PROXY_V2_SIGNATURE))
    if data[:n] == PROXY_V2_SIGNATURE[:n]:
        return True
    n = min(len(data), len(_V1_PREFIX))
    return data[:n] == _V1_PREFIX[:n]


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY header at the start of ``data``; None if more bytes are needed."""
    if data.startswith(PROXY_V2_SIGNATURE[: min(len(data), 12)]) and data[:1] == b"\r":
        return _parse_v2(data)
    if data.startswith(_V1_PREFIX[: min(len(data), 6)]):
        return _parse_v1(data)
    raise ProxyProtocolError("no PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, _V1_MAX + 1)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyProtocolError("PROXY v1 header too long")
        return None
    fields = data[:end].split(b" ")
    if len(fields) < 2 or fields[0] != b"PROXY":
        raise ProxyProtocolError("malformed PROXY v1 header")
    if fields[1] == b"UNKNOWN":
        return ProxyHeader(end + 2, None)
    if fields[1] not in (b"TCP4", b"TCP6") or len(fields) != 6:
        raise ProxyProtocolError("malformed PROXY v1 header")
    try:
        source = ipaddress.ip_address(fields[2].decode("ascii"))
        ipaddress.ip_address(fields[3].decode("ascii"))
        ports = [int(fields[4]), int(fields[5])]
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProxyProtocolError("malformed address in PROXY v1 header") from exc
    if (fields[1] == b"TCP4") != (source.version == 4) or not all(0 <= p <= 65535 for p in ports):
        raise ProxyProtocolError("malformed address in PROXY v1 header")
    return ProxyHeader(end + 2, str(source))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    if data[:12] != PROXY_V2_SIGNATURE:
        raise ProxyProtocolError("bad PROXY v2 signature")
    version_command = data[12]
    if version_command >> 4 != 2:
        raise ProxyProtocolError("unsupported PROXY protocol version")
    command = version_command & 0x0F
    family = data[13]
    length = int.from_bytes(data[14:16], "big")
    total = 16 + length
    if len(data) < total:
        return None
    if command == 0:  # LOCAL: a health check by the proxy itself
        return ProxyHeader(total, None)
    if command != 1:
        raise ProxyProtocolError("unsupported PROXY v2 command")
    body = data[16:total]
    if family == 0x11:  # TCP over IPv4
        if len(body) < 12:
            raise ProxyProtocolError("short PROXY v2 IPv4 address block")
        return ProxyHeader(total, str(ipaddress.IPv4Address(body[:4])))
    if family == 0x21:  # TCP over IPv6
        if len(body) < 36:
            raise ProxyProtocolError("short PROXY v2 IPv6 address block")
        return ProxyHeader(total, str(ipaddress.IPv6Address(body[:16])))
    return ProxyHeader(total, None)  # UNSPEC / UDP / unix: keep the peer
