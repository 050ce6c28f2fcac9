from __future__ import annotations

import pytest

from zeitwork.proxy import headers
from zeitwork.proxy.backends import Backend, Pool, parse_address
from zeitwork.proxy.headers import (
    RequestIds,
    TrustedProxies,
    connection_tokens,
    connection_value_tokens,
    forwarded_node,
    lower_name,
    parse_networks,
    problem_body,
    serialize_response,
    split_host,
    valid_request_id,
)


def test_parse_networks_accepts_cidrs_and_addresses() -> None:
    nets = parse_networks("10.0.0.0/8, 127.0.0.1,::1")
    assert [str(n) for n in nets] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    with pytest.raises(ValueError, match="not an IP"):
        parse_networks("10.0.0.0/8,example.com")


def test_untrusted_peer_cannot_spoof_client_ip() -> None:
    trusted = TrustedProxies(parse_networks("10.0.0.0/8"))
    assert trusted.client_ip("203.0.113.9", b"1.2.3.4") == "203.0.113.9"


def test_trusted_peer_forwards_right_most_untrusted_hop() -> None:
    trusted = TrustedProxies(parse_networks("10.0.0.0/8"))
    assert trusted.client_ip("10.0.0.2", b"1.2.3.4") == "1.2.3.4"
    # a client-supplied left-most entry is not believed past an untrusted hop
    assert trusted.client_ip("10.0.0.2", b"6.6.6.6, 198.51.100.7, 10.0.0.9") == "198.51.100.7"
    assert trusted.client_ip("10.0.0.2", b"garbage, 198.51.100.7") == "198.51.100.7"
    assert trusted.client_ip("10.0.0.2", b"10.1.1.1") == "10.1.1.1"


def test_ipv4_mapped_peer_is_matched() -> None:
    trusted = TrustedProxies(parse_networks("127.0.0.0/8"))
    assert trusted.trusts("::ffff:127.0.0.1")
    assert not trusted.trusts("not-an-ip")


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        (b"Example.COM", "example.com"),
        (b"example.com:8080", "example.com"),
        (b"[::1]:80", "[::1]"),
        (b"[::1]", "[::1]"),
    ],
)
def test_split_host(raw: bytes, host: str) -> None:
    assert split_host(raw) == host
    assert split_host(raw) == host  # the second answer comes from the cache


def test_string_caches_stay_bounded() -> None:
    # a peer sending ever-new names or hosts cannot grow the caches past their cap
    for i in range(3 * headers._CACHE_MAX):
        assert lower_name(b"X-Name-%d" % i) == b"x-name-%d" % i
        assert split_host(b"Host-%d.Example:80" % i) == f"host-{i}.example"
        assert connection_value_tokens(b"Close, X-%d" % i) == {b"close", b"x-%d" % i}
    for cache in (headers._lower_names, headers._hosts, headers._tokens):
        assert 0 < len(cache) <= headers._CACHE_MAX
    # long values are answered, not remembered
    long_name = b"X-" + b"A" * 200
    assert lower_name(long_name) == long_name.lower()
    assert long_name not in headers._lower_names


def test_request_ids_are_unique_and_well_formed() -> None:
    ids = RequestIds()
    first, second = ids.next_bytes(), ids.next_bytes()
    assert first != second
    assert valid_request_id(first) and len(first) == 22
    assert ids.next() == (second[:12] + b"%010x" % 3).decode()


def test_connection_tokens() -> None:
    assert connection_tokens([b"Keep-Alive, X-Secret", b"close"]) == {
        b"keep-alive",
        b"x-secret",
        b"close",
    }


def test_request_id_validation() -> None:
    assert valid_request_id(b"abc-123_x.y:z")
    assert not valid_request_id(b"")
    assert not valid_request_id(b"a b")
    assert not valid_request_id(b"x" * 129)


def test_serialized_local_answer() -> None:
    body = problem_body(503, "no healthy backend")
    raw = serialize_response(503, [(b"retry-after", b"5")], body, close=True)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"content-length: %d" % len(body) in head
    assert b"connection: close" in head
    assert rest == body
    assert b'"status":503' in body


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.1:80", ("10.0.0.1", 80)), ("[::1]:8080", ("::1", 8080)), ("h:1", ("h", 1))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.1", ":80", "h:0", "h:70000", "h:x", "[::1]80"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad backend address"):
        parse_address(text)


async def test_pool_follows_health_of_its_backends() -> None:
    a, b = Backend("127.0.0.1:1", fall=1, rise=1), Backend("127.0.0.1:2", fall=1, rise=1)
    pool = Pool("p", backends=[a, b])
    assert {pool.pick("x"), pool.pick("x")} == {a, b}
    a.record_check(False)
    assert all(pool.pick("x") is b for _ in range(4))
    b.record_check(False)
    assert pool.pick("x") is None
    a.record_check(True)
    assert pool.pick("x") is a


async def test_draining_backend_leaves_rotation() -> None:
    a, b = Backend("127.0.0.1:1"), Backend("127.0.0.1:2")
    pool = Pool("p", backends=[a, b])
    a.drain()
    pool.refresh()
    assert all(pool.pick("x") is b for _ in range(4))


@pytest.mark.parametrize(
    ("ip", "port", "node"),
    [
        ("192.0.2.1", 0, b"for=192.0.2.1"),
        ("192.0.2.1", 443, b'for="192.0.2.1:443"'),
        ("2001:db8::1", 0, b'for="[2001:db8::1]"'),
        ("2001:db8::1", 8443, b'for="[2001:db8::1]:8443"'),
        ("", 0, b"for=unknown"),
    ],
)
def test_forwarded_node(ip: str, port: int, node: bytes) -> None:
    assert forwarded_node(ip, port) == node
