"""The edge on real sockets: TLS, SNI, reload, redirect, headers, rate limits, CORS, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from tests.integration.edge.conftest import (
    Conn,
    EdgeFactory,
    Upstream,
    admin_get,
    client_context,
    wait_for,
)
from zeitwork.edge.certificates.x509 import issue_leaf, self_signed_ca
from zeitwork.edge.client_ip import PROXY_V2_SIGNATURE


def _ca(edge_data: Path) -> Path:
    return edge_data / "edge" / "ca" / "ca.crt"


def _peer_names(conn: Conn) -> list[str]:
    der = conn.ssl_object.getpeercert(binary_form=True)
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(san.value.get_values_for_type(x509.DNSName))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls_versions_alpn_and_sni(make_edge: EdgeFactory, tmp_path: Path) -> None:
    edge = await make_edge(EDGE_DOMAINS="a.test,b.test")
    ca = _ca(tmp_path / "data")
    port = edge.ports["https"]
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_context(ca)
        ctx.minimum_version = ctx.maximum_version = version
        conn = await Conn.open(port, tls=ctx, sni="a.test")
        assert conn.ssl_object.version() == (
            "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
        )
        assert conn.ssl_object.selected_alpn_protocol() == "http/1.1"
        response = await conn.request("/v", host="a.test")
        assert response.status == 200 and response.body == b"ok /v"
        await conn.close()
    # TLS 1.1 is refused
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await Conn.open(port, tls=old, sni="a.test")
    # SNI picks the certificate per host
    for name in ("a.test", "b.test"):
        conn = await Conn.open(port, tls=client_context(ca), sni=name)
        assert _peer_names(conn) == [name]
        await conn.close()
    status, metrics = await admin_get(edge, "/metrics")
    assert status == 200
    assert b'zeitwork_edge_certificate_expiry_seconds{domain="a.test"}' in metrics
    assert b"zeitwork_edge_tls_handshakes_total" in metrics
    # the refused TLS 1.1 handshake is a failure with reason "error"
    failed = b'zeitwork_edge_tls_handshake_failures_total{reason="error"} '
    lines = [line for line in metrics.splitlines() if line.startswith(failed)]
    assert lines and float(lines[0].split()[1]) >= 1, metrics


async def test_a_client_without_sni_never_gets_another_apps_certificate(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="a.test,b.test")
    port = edge.ports["https"]
    ctx = client_context(_ca(tmp_path / "data"))
    ctx.check_hostname = False  # no name sent, nothing to check it against
    for sni in (None, "unknown.test"):  # no default configured: the handshake fails
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            await Conn.open(port, tls=ctx, sni=sni)
    conn = await Conn.open(port, tls=client_context(_ca(tmp_path / "data")), sni="a.test")
    assert _peer_names(conn) == ["a.test"]  # the named hosts are served as before
    await conn.close()


async def test_the_configured_default_certificate_serves_clients_without_sni(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    edge = await make_edge(EDGE_DOMAINS="a.test,b.test", EDGE_DEFAULT_DOMAIN="b.test")
    ctx = client_context(_ca(tmp_path / "data"))
    ctx.check_hostname = False
    conn = await Conn.open(edge.ports["https"], tls=ctx, sni=None)
    assert _peer_names(conn) == ["b.test"]
    response = await conn.request("/v", host="b.test")
    assert response.status == 200
    await conn.close()


async def test_request_targets_at_the_edge(make_edge: EdgeFactory, upstream: Upstream) -> None:
    # the same rules as the load balancer's (one core): answered with 400, never forwarded
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_HTTPS_REDIRECT="false")
    seen = len(upstream.seen)
    for raw in (
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET http://a.example/x HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET /x#f HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET / HTTP/1.1\rHost: app.test\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.ports["http"])
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert data.startswith(b"HTTP/1.1 400 "), (raw, data[:200])
    conn = await Conn.open(edge.ports["http"])
    conn.writer.write(b"GET http://app.test/abs HTTP/1.1\nHost: app.test\n\n")  # LF only
    response = await conn.read_response()
    await conn.close()
    assert response.status == 200 and response.body == b"ok /abs"
    assert len(upstream.seen) == seen + 1


async def test_static_certificate_reload_keeps_open_connections(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    ca_cert, ca_key = self_signed_ca("test CA")
    (tmp_path / "ca.pem").write_text(ca_cert)
    chain, key = issue_leaf(["app.test"], ca_cert_pem=ca_cert, ca_key_pem=ca_key)
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_text(chain)
    key_path.write_text(key)
    edge = await make_edge(SSL_CERT_PATH=str(cert_path), SSL_KEY_PATH=str(key_path))
    port = edge.ports["https"]
    ctx = client_context(tmp_path / "ca.pem")
    kept = await Conn.open(port, tls=ctx, sni="app.test")
    first_serial = x509.load_der_x509_certificate(kept.ssl_object.getpeercert(True)).serial_number
    assert (await kept.request("/1")).status == 200

    # replace the pair (new key, new serial); atomically, as a deploy tool would
    chain2, key2 = issue_leaf(["app.test"], ca_cert_pem=ca_cert, ca_key_pem=ca_key)
    (tmp_path / "new.key").write_text(key2)
    (tmp_path / "new.crt").write_text(chain2)
    (tmp_path / "new.key").replace(key_path)
    (tmp_path / "new.crt").replace(cert_path)

    async def new_cert_served() -> bool:
        conn = await Conn.open(port, tls=ctx, sni="app.test")
        serial = x509.load_der_x509_certificate(conn.ssl_object.getpeercert(True)).serial_number
        await conn.close()
        return serial != first_serial

    await wait_for(new_cert_served, timeout=10)
    # the connection opened before the reload is still served
    response = await kept.request("/2")
    assert response.status == 200 and response.body == b"ok /2"
    await kept.close()


async def test_redirect_and_headers(
    make_edge: EdgeFactory, tmp_path: Path, upstream: Upstream
) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_CSP="default-src 'self'")
    plain = await Conn.open(edge.ports["http"])
    redirected = await plain.request("/path?q=1", host="app.test:80")
    assert redirected.status == 308
    assert (
        redirected.header(b"location")
        == f"https://app.test:{edge.ports['https']}/path?q=1".encode()
    )
    # the ACME challenge path is never redirected
    challenge = await plain.request("/.well-known/acme-challenge/unknown", host="app.test")
    assert challenge.status == 404
    # a host without a certificate is served over HTTP, without HSTS
    served = await plain.request("/x", host="nocert.test")
    assert served.status == 200
    assert served.header(b"strict-transport-security") is None
    assert served.header(b"x-content-type-options") == b"nosniff"
    await plain.close()

    tls = await Conn.open(
        edge.ports["https"], tls=client_context(_ca(tmp_path / "data")), sni="app.test"
    )
    secure = await tls.request("/y", host="app.test")
    assert secure.header(b"strict-transport-security") == b"max-age=31536000"
    assert secure.header(b"content-security-policy") == b"default-src 'self'"
    assert secure.header(b"referrer-policy") == b"strict-origin-when-cross-origin"
    assert secure.header(b"permissions-policy") is not None
    # a header the app set is kept, not duplicated
    app = await tls.request("/app-headers", host="app.test")
    assert app.headers[b"x-frame-options"] == [b"DENY"]
    await tls.close()
    # forwarding headers reached the app
    assert upstream.seen[-1][b"x-forwarded-proto"] == b"https"
    assert upstream.seen[-1][b"x-forwarded-for"] == b"127.0.0.1"


async def test_rate_limit_and_spoofed_forwarded_for(make_edge: EdgeFactory) -> None:
    edge = await make_edge(RATE_LIMIT_RPS=0.01, RATE_LIMIT_BURST=3)
    conn = await Conn.open(edge.ports["http"])
    statuses = [(await conn.request("/", host="x.test")).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    limited = await conn.request("/", host="x.test", headers={"Accept": "application/json"})
    assert limited.status == 429
    assert limited.header(b"content-type") == b"application/problem+json"
    assert int(limited.header(b"retry-after") or b"0") >= 1
    assert limited.header(b"ratelimit-policy") == b'"default";q=3;w=300'
    assert limited.header(b"ratelimit") is not None
    # a spoofed X-Forwarded-For from an untrusted peer changes nothing
    spoofed = await conn.request("/", host="x.test", headers={"X-Forwarded-For": "203.0.113.50"})
    assert spoofed.status == 429
    html = await conn.request("/", host="x.test", headers={"Accept": "text/html"})
    assert html.status == 429 and html.body.startswith(b"<!doctype html>")
    await conn.close()
    _, metrics = await admin_get(edge, "/metrics")
    assert b"zeitwork_edge_rate_limited_total 3.0" in metrics


async def test_flood_of_addresses_keeps_memory_bounded_and_others_limited(
    make_edge: EdgeFactory,
) -> None:
    edge = await make_edge(
        RATE_LIMIT_RPS=0.01,
        RATE_LIMIT_BURST=2,
        EDGE_RATE_LIMIT_CAPACITY=200,
        EDGE_TRUSTED_PROXIES="127.0.0.1/32",
    )
    conn = await Conn.open(edge.ports["http"])
    regular = {"X-Forwarded-For": "198.51.100.7"}
    assert [(await conn.request("/", host="x.test", headers=regular)).status for _ in range(3)] == [
        200,
        200,
        429,
    ]
    # a trusted proxy forwards a flood of distinct client addresses
    for i in range(1000):
        xff = {"X-Forwarded-For": f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"}
        await conn.request("/", host="x.test", headers=xff)
        if i % 100 == 0:
            # the regular client stays limited throughout: its entry was never reset
            assert (await conn.request("/", host="x.test", headers=regular)).status == 429
    assert len(edge.limiter) <= 200
    assert edge.limiter.evicted_live > 0  # the table was full: only the stalest went
    assert (await conn.request("/", host="x.test", headers=regular)).status == 429
    await conn.close()


async def test_cors_preflight_and_responses(make_edge: EdgeFactory) -> None:
    edge = await make_edge(
        EDGE_CORS_ORIGINS="https://app.example.com,https://*.example.org",
        EDGE_CORS_HEADERS="Content-Type,X-Token",
        EDGE_CORS_CREDENTIALS="true",
    )
    conn = await Conn.open(edge.ports["http"])
    pre = await conn.request(
        "/api",
        method="OPTIONS",
        host="x.test",
        headers={"Origin": "https://a.example.org", "Access-Control-Request-Method": "PUT"},
    )
    assert pre.status == 204
    assert pre.header(b"access-control-allow-origin") == b"https://a.example.org"
    assert pre.header(b"access-control-allow-credentials") == b"true"
    assert pre.header(b"access-control-allow-headers") == b"Content-Type, X-Token"
    assert b"PUT" in (pre.header(b"access-control-allow-methods") or b"")
    assert pre.headers[b"vary"] == [b"Origin"]
    denied = await conn.request(
        "/api",
        method="OPTIONS",
        host="x.test",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "PUT"},
    )
    assert denied.status == 403 and denied.header(b"access-control-allow-origin") is None
    ok = await conn.request("/api", host="x.test", headers={"Origin": "https://app.example.com"})
    assert (
        ok.status == 200 and ok.header(b"access-control-allow-origin") == b"https://app.example.com"
    )
    evil = await conn.request("/api", host="x.test", headers={"Origin": "https://evil.com"})
    assert evil.status == 200 and evil.header(b"access-control-allow-origin") is None
    assert evil.header(b"vary") == b"Origin"
    await conn.close()


async def test_slow_clients_and_connection_caps(make_edge: EdgeFactory) -> None:
    edge = await make_edge(
        EDGE_HEADER_TIMEOUT=0.5, EDGE_HANDSHAKE_TIMEOUT=0.5, EDGE_MAX_CONNECTIONS_PER_IP=3
    )
    loop = asyncio.get_running_loop()
    # slowloris: half a request head, then nothing
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.ports["http"])
    writer.write(b"GET / HTTP/1.1\r\nHost: x.test\r\nX-Slow: ")
    started = loop.time()
    async with asyncio.timeout(5):
        data = await reader.read()
    assert (
        loop.time() - started < 4
    )  # cut at the 0.5 s header timeout (sweep every 0.25 s), not left hanging
    assert data == b"" or data.startswith(b"HTTP/1.1 408")
    writer.close()
    # a TLS handshake that never starts is cut at the handshake timeout
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.ports["https"])
    started = loop.time()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    assert loop.time() - started < 4
    writer.close()
    # at most 3 connections per client address
    conns = [await Conn.open(edge.ports["http"]) for _ in range(3)]
    for c in conns:
        assert (await c.request("/")).status == 200
    # a fourth is answered, not reset: 503 with Retry-After once its request head is read
    extra = await Conn.open(edge.ports["http"])
    refused = await extra.request("/")
    assert refused.status == 503 and refused.header(b"retry-after") == b"5"
    assert refused.header(b"connection") == b"close"
    await extra.close()
    # one that never sends its head holds its refusal place only briefly (the header timeout)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.ports["http"])
    started = loop.time()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    assert loop.time() - started < 2
    writer.close()
    assert edge.proxy.refusing == 0
    for c in conns:
        await c.close()


def metric(text: bytes, name: str) -> float:
    """The value of an unlabelled sample ``name`` in a Prometheus text page."""
    for line in text.splitlines():
        if line.startswith(name.encode() + b" "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


async def check_https_caps_count_handshakes(
    https: int, ctx: ssl.SSLContext, host: str, metrics: Callable[[], Awaitable[bytes]]
) -> None:
    """With EDGE_MAX_CONNECTIONS_PER_IP=3 (and no connection open yet): HTTPS connections
    hold their address's places from TCP accept, while still in (or never starting) their
    handshake; the places come back when they end, handshake completed or not."""

    async def held() -> float:
        return metric(await metrics(), "zeitwork_edge_connections")

    async def tls_request() -> int:
        conn = await Conn.open(https, tls=ctx, sni=host)
        try:
            return (await conn.request("/", host=host)).status
        finally:
            await conn.close()

    refused_before = metric(await metrics(), "zeitwork_edge_connections_refused_total")
    silent = [await asyncio.open_connection("127.0.0.1", https) for _ in range(3)]
    await wait_for(lambda: _equals(held, 3))
    # a fourth connection from the address is refused, with a status after its request head
    assert await tls_request() == 503
    page = await metrics()
    assert metric(page, "zeitwork_edge_connections_refused_total") == refused_before + 1
    # a handshake that fails gives its place back
    silent[0][1].close()
    await wait_for(lambda: _equals(held, 2))
    reader, writer = await asyncio.open_connection("127.0.0.1", https)
    writer.write(b"\x16\x03\x01\x00\x05not a ClientHello at all\r\n\r\n")
    async with asyncio.timeout(5):
        ended = await reader.read()  # the TLS layer gave up (an alert at most) and closed
    assert ended == b"" or ended.startswith(b"\x15\x03"), ended
    writer.close()
    await wait_for(lambda: _equals(held, 2))
    # and so does a connection that ends without a handshake
    for _, w in silent[1:]:
        w.close()
    await wait_for(lambda: _equals(held, 0))
    conns = [await Conn.open(https, tls=ctx, sni=host) for _ in range(3)]
    for conn in conns:
        assert (await conn.request("/", host=host)).status == 200
    assert await held() == 3
    for conn in conns:
        await conn.close()
    await wait_for(lambda: _equals(held, 0))
    assert await tls_request() == 200


async def _equals(probe: Callable[[], Awaitable[float]], value: float) -> bool:
    return await probe() == value


@pytest.mark.parametrize("proxy_protocol", [False, True], ids=["plain", "proxy-protocol"])
async def test_https_connection_caps_count_connections_in_their_handshake(
    make_edge: EdgeFactory, tmp_path: Path, proxy_protocol: bool
) -> None:
    """Both HTTPS listeners: the loop's TLS protocol admitted at accept, and the one that
    reads a PROXY header first (here from direct clients, none trusted)."""
    edge = await make_edge(
        EDGE_DOMAINS="app.test",
        EDGE_MAX_CONNECTIONS_PER_IP=3,
        EDGE_HANDSHAKE_TIMEOUT=30,
        EDGE_PROXY_PROTOCOL=str(proxy_protocol).lower(),
        EDGE_TRUSTED_PROXIES="192.0.2.0/24",
    )

    async def metrics() -> bytes:
        status, body = await admin_get(edge, "/metrics")
        assert status == 200
        return body

    ctx = client_context(_ca(tmp_path / "data"))
    await check_https_caps_count_handshakes(edge.ports["https"], ctx, "app.test", metrics)


async def test_https_connections_are_freed_without_the_cycle_collector(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    """Each HTTPS connection's TLS layer holds a 256 KiB read buffer: one kept alive by a
    reference cycle until the cycle collector runs costs memory and allocator time."""
    import gc

    edge = await make_edge(EDGE_DOMAINS="app.test")
    ctx = client_context(_ca(tmp_path / "data"))

    def tls_layers() -> int:
        return sum(type(o).__name__ == "TlsTransport" for o in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            conn = await Conn.open(edge.ports["https"], tls=ctx, sni="app.test")
            assert (await conn.request("/", host="app.test")).status == 200
            await conn.close()
        await wait_for(lambda: _no_connections(edge))
        await asyncio.sleep(0.1)  # connection_lost callbacks run
        assert tls_layers() <= 1  # at most the last one, still being torn down
    finally:
        gc.enable()


async def _no_connections(edge: Any) -> bool:
    return not edge.proxy.connections


async def test_health_follows_load_balancer(make_edge: EdgeFactory, upstream: Upstream) -> None:
    edge = await make_edge()
    status, body = await admin_get(edge, "/health")
    assert status == 200 and b"ok" in body
    await upstream.stop()
    status, body = await admin_get(edge, "/health")
    assert status == 503 and b"degraded" in body
    # the proxy core's own error answer, as HTML or problem JSON by Accept
    conn = await Conn.open(edge.ports["http"])
    page = await conn.request("/", host="x.test", headers={"Accept": "text/html,*/*;q=0.8"})
    assert page.status in (502, 503)
    assert page.header(b"content-type") == b"text/html; charset=utf-8"
    assert page.body.startswith(b"<!doctype html>")
    problem = await conn.request("/", host="x.test", headers={"Accept": "application/json"})
    assert problem.status in (502, 503)
    assert problem.header(b"content-type") == b"application/problem+json"
    await conn.close()
    status, _ = await admin_get(edge, "/nope")
    assert status == 404


async def test_proxy_protocol_from_trusted_proxy(
    make_edge: EdgeFactory, upstream: Upstream
) -> None:
    edge = await make_edge(
        EDGE_PROXY_PROTOCOL="true",
        EDGE_TRUSTED_PROXIES="127.0.0.1/32",
        RATE_LIMIT_RPS=0.01,
        RATE_LIMIT_BURST=1,
    )
    port = edge.ports["http"]
    for header, client in (
        (b"PROXY TCP4 192.0.2.9 198.51.100.1 40000 80\r\n", b"192.0.2.9"),
        (
            PROXY_V2_SIGNATURE
            + bytes([0x21, 0x11, 0, 12, 192, 0, 2, 10, 198, 51, 100, 1, 0x9C, 0x40, 0, 80]),
            b"192.0.2.10",
        ),
    ):
        conn = await Conn.open(port)
        conn.writer.write(header)
        first = await conn.request("/pp")
        assert first.status == 200
        assert upstream.seen[-1][b"x-forwarded-for"] == client
        # the limit applies to the client named in the header (burst 1)
        assert (await conn.request("/pp")).status == 429
        await conn.close()
    # a malformed header from the trusted proxy closes the connection
    conn = await Conn.open(port)
    conn.writer.write(b"PROXY TCP4 not-an-ip 198.51.100.1 1 2\r\n")
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await conn.request("/")
    await conn.close()


async def test_https_behind_a_proxy_caps_the_named_client_before_its_handshake(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    """With the PROXY protocol on HTTPS, the per-address cap applies to the client the header
    names from the moment the header is read, not once its handshake is done; the proxy's own
    address is not capped per address."""
    edge = await make_edge(
        EDGE_DOMAINS="app.test",
        EDGE_PROXY_PROTOCOL="true",
        EDGE_TRUSTED_PROXIES="127.0.0.1/32",
        EDGE_MAX_CONNECTIONS_PER_IP=1,
        EDGE_HANDSHAKE_TIMEOUT=30,
    )
    port = edge.ports["https"]

    def header(last_octet: int) -> bytes:
        return f"PROXY TCP4 192.0.2.{last_octet} 198.51.100.1 40000 443\r\n".encode()

    # client .5 with a header and no ClientHello yet: it holds .5's one place
    _, silent = await asyncio.open_connection("127.0.0.1", port)
    silent.write(header(5))
    await silent.drain()

    async def metric_value(name: str) -> float:
        status, body = await admin_get(edge, "/metrics")
        assert status == 200
        return metric(body, name)

    await wait_for(lambda: _equals(lambda: metric_value("zeitwork_edge_connections"), 1))
    refused = await metric_value("zeitwork_edge_connections_refused_total")
    handshakes = await metric_value("zeitwork_edge_tls_handshakes_total")
    ctx = client_context(_ca(tmp_path / "data"))
    request = b"GET /named HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    # a second connection for .5 is over the cap: answered 503 (after its handshake)
    answer = await asyncio.to_thread(
        _tls_over, port, header(5), ctx, "app.test", request, split=False
    )
    assert answer.startswith(b"HTTP/1.1 503"), answer[:100]
    assert b"retry-after: 5" in answer.lower()
    assert await metric_value("zeitwork_edge_connections_refused_total") == refused + 1
    assert await metric_value("zeitwork_edge_tls_handshakes_total") == handshakes + 1
    # .6 is another client: served, though it comes from the same proxy
    answer = await asyncio.to_thread(
        _tls_over, port, header(6), ctx, "app.test", request, split=False
    )
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    silent.close()


async def test_websocket_upgrade_through_tls(make_edge: EdgeFactory, tmp_path: Path) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test")
    conn = await Conn.open(
        edge.ports["https"], tls=client_context(_ca(tmp_path / "data")), sni="app.test"
    )
    conn.writer.write(
        b"GET /ws HTTP/1.1\r\nHost: app.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with asyncio.timeout(10):
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        for word in (b"hello", b"edge"):
            conn.writer.write(word)
            assert await conn.reader.readexactly(len(word)) == word.upper()
    await conn.close()


async def test_bad_input_over_tls_is_refused(make_edge: EdgeFactory, tmp_path: Path) -> None:
    edge = await make_edge(EDGE_DOMAINS="app.test", EDGE_MAX_BODY=1024)
    ctx = client_context(_ca(tmp_path / "data"))
    cases = [
        (
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, 413),
        (b"GET / HTTP/1.1\r\nHost app.test\r\n\r\n", 400),
    ]
    for raw, status in cases:
        conn = await Conn.open(edge.ports["https"], tls=ctx, sni="app.test")
        conn.writer.write(raw)
        async with asyncio.timeout(10):
            line = await conn.reader.readline()
        assert line.startswith(b"HTTP/1.1 %d" % status), (raw[:40], line)
        await conn.close()
    # answers to input the core could not parse follow the Accept header read so far
    for accept, content_type in (
        (b"text/html,*/*;q=0.8", b"text/html; charset=utf-8"),
        (b"application/json", b"application/problem+json"),
    ):
        for raw, status in cases[:2]:
            asked = raw.replace(
                b"Host: app.test\r\n", b"Host: app.test\r\nAccept: " + accept + b"\r\n"
            )
            conn = await Conn.open(edge.ports["https"], tls=ctx, sni="app.test")
            conn.writer.write(asked)
            async with asyncio.timeout(10):
                answer = await conn.reader.read()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d" % status), head
            assert b"\r\ncontent-type: " + content_type + b"\r\n" in head.lower() + b"\r\n"
            assert body.startswith(b"<!doctype html>") == content_type.startswith(b"text/html")
            await conn.close()
    # normal traffic keeps flowing
    conn = await Conn.open(edge.ports["https"], tls=ctx, sni="app.test")
    assert (await conn.request("/after")).status == 200
    await conn.close()


async def test_https_streams_both_ways_with_back_pressure_and_pipelining(
    make_edge: EdgeFactory, tmp_path: Path
) -> None:
    """The edge's TLS layer under load: a large download read slowly, a large upload, and
    pipelined requests on one connection, then the client's close_notify."""
    import hashlib

    edge = await make_edge(EDGE_DOMAINS="app.test")
    ctx = client_context(_ca(tmp_path / "data"))
    size = 8 * 1024 * 1024
    conn = await Conn.open(edge.ports["https"], tls=ctx, sni="app.test")
    conn.writer.write(b"GET /big/%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % size)
    async with asyncio.timeout(30):
        head = await conn.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: %d" % size in head
        got = hashlib.sha256()
        left = size
        while left:
            chunk = await conn.reader.read(min(left, 256 * 1024))
            assert chunk, "the download stopped short"
            got.update(chunk)
            left -= len(chunk)
            if left > size // 2:
                await asyncio.sleep(0.002)  # a slow reader for the first half
    block = bytes(range(256)) * 256
    want = hashlib.sha256()
    for start in range(0, size, len(block)):
        want.update(block[: min(len(block), size - start)])
    assert got.hexdigest() == want.hexdigest()
    # a large upload on the same connection
    body = os.urandom(6 * 1024 * 1024)
    conn.writer.write(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    conn.writer.write(body)
    async with asyncio.timeout(30):
        head = await conn.reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answer = await conn.reader.readexactly(length)
    assert answer == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    # three pipelined requests in one write, answered in order
    conn.writer.write(
        b"".join(b"GET /p%d HTTP/1.1\r\nHost: app.test\r\n\r\n" % i for i in range(3))
    )
    for i in range(3):
        response = await conn.read_response()
        assert response.status == 200 and response.body == b"ok /p%d" % i
    # the client's close_notify ends the connection cleanly
    conn.writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await conn.writer.wait_closed()
    await wait_for(lambda: _no_connections(edge))


def _tls_over(
    port: int, prefix: bytes, ctx: ssl.SSLContext, sni: str, request: bytes, *, split: bool
) -> bytes:
    """One HTTPS request on a raw socket that first sends ``prefix`` (a PROXY header): in the
    same segment as the ClientHello, or (``split``) in two pieces ahead of it."""
    import socket
    import time

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(inc, out, server_hostname=sni)
        if split:
            sock.sendall(prefix[:7])
            time.sleep(0.05)
            sock.sendall(prefix[7:])
            time.sleep(0.05)
            prefix = b""
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(prefix + out.read())
                prefix = b""
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed during the handshake") from None
                inc.write(chunk)
        tls.write(request)
        sock.sendall(out.read())
        response = b""
        while True:
            try:
                piece = tls.read(65536)
                if not piece:  # close_notify
                    return response
                response += piece
            except ssl.SSLWantReadError:
                chunk = sock.recv(65536)
                if not chunk:
                    return response
                inc.write(chunk)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return response
    finally:
        sock.close()


async def test_proxy_protocol_before_tls_from_trusted_proxy(
    make_edge: EdgeFactory, upstream: Upstream, tmp_path: Path
) -> None:
    edge = await make_edge(
        EDGE_DOMAINS="a.test",
        EDGE_PROXY_PROTOCOL="true",
        EDGE_TRUSTED_PROXIES="127.0.0.1/32",
        EDGE_MAX_CONNECTIONS_PER_IP=1,
    )
    port = edge.ports["https"]
    ctx = client_context(_ca(tmp_path / "data"))
    request = b"GET /tls-pp HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    v2 = PROXY_V2_SIGNATURE + bytes(
        [0x21, 0x11, 0, 12, 192, 0, 2, 20, 198, 51, 100, 1, 1, 0, 1, 187]
    )
    cases = [
        (b"PROXY TCP4 192.0.2.11 198.51.100.1 40000 443\r\n", False, b"192.0.2.11"),
        (b"PROXY TCP4 192.0.2.12 198.51.100.1 40000 443\r\n", True, b"192.0.2.12"),
        (v2, False, b"192.0.2.20"),
        (v2, True, b"192.0.2.20"),
    ]
    for header, split, client in cases:
        response = await asyncio.to_thread(
            _tls_over, port, header, ctx, "a.test", request, split=split
        )
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        seen = upstream.seen[-1]
        assert seen[b"x-forwarded-for"] == client
        assert seen[b"x-forwarded-proto"] == b"https"
    # the per-address cap (1 here) counts the clients named in the headers: two at once pass
    results = await asyncio.gather(
        *(
            asyncio.to_thread(_tls_over, port, header, ctx, "a.test", request, split=True)
            for header, _, _ in cases[:2]
        )
    )
    assert all(r.startswith(b"HTTP/1.1 200") for r in results)
    # from the trusted proxy a header is required: a bare ClientHello is refused
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        await asyncio.to_thread(_tls_over, port, b"", ctx, "a.test", request, split=False)
    # a malformed header closes the connection before any TLS
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        await asyncio.to_thread(
            _tls_over, port, b"PROXY TCP4 nope 1.2.3.4 1 2\r\n", ctx, "a.test", request, split=False
        )
    status, metrics = await admin_get(edge, "/metrics")
    assert status == 200 and b"zeitwork_edge_tls_handshakes_total" in metrics


async def test_proxy_protocol_listener_takes_no_header_from_untrusted_peers(
    make_edge: EdgeFactory, upstream: Upstream, tmp_path: Path
) -> None:
    edge = await make_edge(
        EDGE_DOMAINS="a.test", EDGE_PROXY_PROTOCOL="true", EDGE_TRUSTED_PROXIES="192.0.2.0/24"
    )
    ctx = client_context(_ca(tmp_path / "data"))
    request = b"GET /direct HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
    response = await asyncio.to_thread(
        _tls_over, edge.ports["https"], b"", ctx, "a.test", request, split=False
    )
    assert response.startswith(b"HTTP/1.1 200")
    assert upstream.seen[-1][b"x-forwarded-for"] == b"127.0.0.1"
    # a PROXY header from an untrusted peer is not read: it breaks the TLS handshake instead
    with pytest.raises((ConnectionError, ssl.SSLError, OSError)):
        await asyncio.to_thread(
            _tls_over,
            edge.ports["https"],
            b"PROXY TCP4 203.0.113.5 198.51.100.1 1 2\r\n",
            ctx,
            "a.test",
            request,
            split=False,
        )


@pytest.mark.slow
async def test_the_edge_times_out_by_inactivity_not_by_age(make_edge: EdgeFactory) -> None:
    # the same inactivity timeouts as the load balancer's (EDGE_*): a stream trickling for
    # 3.5 s passes 1 s timeouts whole; a backend that never answers is 504 after 1 s
    from tests.integration.lb.conftest import read_response
    from tests.integration.lb.test_streaming import _never_answer, _trickle, raw_origin

    loop = asyncio.get_running_loop()
    for handler, expect in ((_trickle, b"200"), (_never_answer, b"504")):
        async with raw_origin(handler) as address:
            edge = await make_edge(
                LOAD_BALANCER_URL=f"http://{address}",
                EDGE_HTTPS_REDIRECT="false",
                EDGE_FIRST_BYTE_TIMEOUT=1,
                EDGE_STREAM_IDLE_TIMEOUT=1,
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", edge.ports["http"])
            started = loop.time()
            writer.write(b"GET /events HTTP/1.1\r\nHost: app.test\r\n\r\n")
            response = await asyncio.wait_for(read_response(reader), 10)
            elapsed = loop.time() - started
            writer.close()
        assert str(response.status).encode() == expect
        if expect == b"200":
            assert response.body == b"0123456" and elapsed > 3.0
        else:
            assert 0.9 < elapsed < 2.5


async def test_the_default_limits_do_not_throttle_a_benchmark_from_one_address(
    make_edge: EdgeFactory,
) -> None:
    # what `h2load -n 2000 -c 10` does over HTTP/1.1: 2,000 requests on 10 keep-alive
    # connections from one address, as fast as they go; the former defaults (100/s, burst
    # 200) answered 1,791 of them 429
    edge = await make_edge(EDGE_HTTPS_REDIRECT="false")
    statuses: list[int] = []

    async def one_connection() -> None:
        conn = await Conn.open(edge.ports["http"])
        try:
            for _ in range(200):
                statuses.append((await conn.request("/bench", host="app.test")).status)
        finally:
            await conn.close()

    await asyncio.gather(*(one_connection() for _ in range(10)))
    assert len(statuses) == 2000
    assert set(statuses) == {200}
