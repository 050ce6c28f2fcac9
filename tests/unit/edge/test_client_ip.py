from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeitwork.edge.client_ip import (
    PROXY_V2_SIGNATURE,
    ProxyProtocolError,
    might_be_proxy_header,
    parse_proxy_header,
)
from zeitwork.proxy.headers import TrustedProxies, parse_networks

# The edge resolves X-Forwarded-For with the proxy core's TrustedProxies; these tests pin
# the guarantees the edge documents (rightmost untrusted wins, untrusted peers change nothing).
TRUSTED = TrustedProxies(parse_networks("10.0.0.0/8, fd00::/8"))


def client_address(peer: str, xff: bytes | None, trusted: TrustedProxies) -> str:
    return trusted.client_ip(peer, xff)


def test_untrusted_peer_xff_ignored() -> None:
    assert client_address("203.0.113.9", b"1.2.3.4", TRUSTED) == "203.0.113.9"
    assert client_address("203.0.113.9", None, TRUSTED) == "203.0.113.9"
    assert client_address("10.0.0.1", b"1.2.3.4", TrustedProxies(())) == "10.0.0.1"


def test_rightmost_untrusted_wins() -> None:
    # the client wrote "6.6.6.6" itself; 1.2.3.4 is what our trusted proxy 10.0.0.2 saw
    assert client_address("10.0.0.1", b"6.6.6.6, 1.2.3.4, 10.0.0.2", TRUSTED) == "1.2.3.4"
    assert client_address("10.0.0.1", b"10.1.1.1, 10.0.0.2", TRUSTED) == "10.1.1.1"
    assert client_address("10.0.0.1", b"garbage, 10.0.0.2", TRUSTED) == "10.0.0.2"
    assert client_address("10.0.0.1", b"", TRUSTED) == "10.0.0.1"


def test_bad_cidr() -> None:
    with pytest.raises(ValueError, match="not an IP"):
        parse_networks("10.0.0.0/33")
    assert not TrustedProxies(parse_networks(" , "))


@settings(deadline=None)
@given(st.lists(st.ip_addresses(v=4).map(str), min_size=1, max_size=6), st.ip_addresses(v=4))
def test_untrusted_peer_is_always_the_client(chain: list[str], peer: ipaddress.IPv4Address) -> None:
    peer_s = str(peer)
    if TRUSTED.trusts(peer_s):
        return
    assert client_address(peer_s, ", ".join(chain).encode(), TRUSTED) == peer_s


def test_proxy_v1() -> None:
    data = b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n"
    header = parse_proxy_header(data)
    assert header is not None
    assert header.source == "192.0.2.1"
    assert data[header.length :].startswith(b"GET /")
    six = parse_proxy_header(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
    assert six is not None and six.source == "2001:db8::1"
    unknown = parse_proxy_header(b"PROXY UNKNOWN\r\n")
    assert unknown is not None and unknown.source is None
    assert parse_proxy_header(b"PROXY TCP4 192.0.2.1") is None
    assert might_be_proxy_header(b"PRO")
    assert not might_be_proxy_header(b"GET / HTTP/1.1")


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 999.0.2.1 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.1 1 99999\r\n",
        b"PROXY TCP9 a b c d\r\n",
        b"PROXY " + b"x" * 200,
        b"GET / HTTP/1.1\r\n",
    ],
)
def test_proxy_v1_bad(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


def _v2(command: int, family: int, body: bytes) -> bytes:
    return (
        PROXY_V2_SIGNATURE + bytes([0x20 | command, family]) + len(body).to_bytes(2, "big") + body
    )


def test_proxy_v2() -> None:
    body4 = bytes([192, 0, 2, 7]) + bytes([198, 51, 100, 1]) + (1234).to_bytes(2, "big") * 2
    data = _v2(1, 0x11, body4) + b"GET /"
    header = parse_proxy_header(data)
    assert header is not None and header.source == "192.0.2.7"
    assert data[header.length :] == b"GET /"
    body6 = ipaddress.IPv6Address("2001:db8::5").packed + bytes(16) + bytes(4)
    h6 = parse_proxy_header(_v2(1, 0x21, body6))
    assert h6 is not None and h6.source == "2001:db8::5"
    local = parse_proxy_header(_v2(0, 0x00, b""))
    assert local is not None and local.source is None
    assert parse_proxy_header(_v2(1, 0x11, body4)[:20]) is None
    assert parse_proxy_header(PROXY_V2_SIGNATURE[:5]) is None
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(_v2(1, 0x11, b"\x01\x02"))
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(PROXY_V2_SIGNATURE + bytes([0x11, 0x11, 0, 0]))
