from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.lb.conftest import (
    MakeLB,
    MakeOrigin,
    connection,
    http,
    read_response,
    read_until_closed,
)


async def send_raw(port: int, raw: bytes) -> tuple[int, bytes]:
    """Send raw bytes; return the status of the first answer and everything until close."""
    async with connection(port) as (reader, writer):
        writer.write(raw)
        data = await read_until_closed(reader)
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", 400),
        (b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET nowhere HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
        # smuggling shapes
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nhello\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
        # request targets (RFC 9112 3.2)
        (b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n", 400),
        (b"GET http://user@a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n", 400),
        (b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.0\r\n\r\n", 400),  # HTTP/1.0 without Host is not forwarded either
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", 400),
        (b'GET / HTTP/1.1\r\nHost: a"b\r\n\r\n', 400),
        # a bare CR is never a line ending (only a bare LF is, RFC 9112 2.2)
        (b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n", 400),
    ],
)
async def test_malformed_requests_get_4xx_and_the_connection_closes(
    make_origin: MakeOrigin, make_lb: MakeLB, raw: bytes, status: int
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    got, data = await send_raw(lb.port, raw)
    assert got == status, data[:300]
    assert b"connection: close" in data.lower()
    assert b"application/problem+json" in data
    assert o.hits == 0  # nothing malformed reaches the app


async def test_headers_over_64_kib_get_431(make_origin: MakeOrigin, make_lb: MakeLB) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
    got, _ = await send_raw(lb.port, b"GET / HTTP/1.1\r\nHost: a\r\n" + big + b"\r\n")
    assert got == 431
    # sent in small pieces too
    async with connection(lb.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
        for i in range(80):
            writer.write(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000))
            await writer.drain()
        data = await read_until_closed(reader)
    assert data.startswith(b"HTTP/1.1 431")
    # just under the limit passes
    ok = b"".join(b"X-Ok-%d: %s\r\n" % (i, b"v" * 1000) for i in range(50))
    async with connection(lb.port) as (reader, writer):
        writer.write(b"GET /who HTTP/1.1\r\nHost: a\r\n" + ok + b"\r\n")
        assert (await read_response(reader)).status == 200


async def test_body_over_the_limit_gets_413(make_origin: MakeOrigin, make_lb: MakeLB) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address, max_body=1000)
    got, _ = await send_raw(
        lb.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n" + b"x" * 1001
    )
    assert got == 413
    assert o.hits == 0
    # chunked: the limit is enforced while streaming
    async with connection(lb.port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            writer.write(b"190\r\n" + b"y" * 400 + b"\r\n")
        data = await read_until_closed(reader)
    assert data.startswith(b"HTTP/1.1 413"), data[:100]
    # at the limit is fine
    r = await http(lb.port, "POST", "/echo", body=b"z" * 1000)
    assert r.status == 200 and r.body == b"z" * 1000


async def test_slowloris_is_cut_at_the_header_timeout(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address, header_timeout=0.6)
    started = time.monotonic()
    async with connection(lb.port) as (reader, writer):
        writer.write(b"GET / HTTP/1.1\r\n")
        answer = asyncio.create_task(reader.read(65536))
        for i in range(40):  # one header line every 100 ms: never finishes on its own
            if answer.done():
                break
            writer.write(b"X-Slow-%d: 1\r\n" % i)
            await asyncio.sleep(0.1)
        data = await asyncio.wait_for(answer, 3)
        elapsed = time.monotonic() - started
        assert data.startswith(b"HTTP/1.1 408")
        assert 0.5 < elapsed < 1.5
        assert await read_until_closed(reader, timeout=4) is not None
    assert o.hits == 0


async def test_idle_keep_alive_connection_is_closed(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address, idle_timeout=0.5)
    async with connection(lb.port) as (reader, writer):
        writer.write(b"GET /who HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).status == 200
        started = time.monotonic()
        assert await read_until_closed(reader, timeout=3) == b""
        assert time.monotonic() - started < 2


async def test_backend_garbage_is_502(make_origin: MakeOrigin, make_lb: MakeLB) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address, eject_failures=100)
    r = await http(lb.port, path="/garbage")
    assert r.status == 502
    assert r.json()["title"] == "Bad gateway"
    assert (await http(lb.port, path="/who")).status == 200


async def test_backend_that_never_answers_gives_504(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address, first_byte_timeout=0.5)
    started = time.monotonic()
    r = await http(lb.port, path="/slow/5")
    assert r.status == 504
    assert time.monotonic() - started < 2


async def test_client_connection_close_is_honoured(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    async with connection(lb.port) as (reader, writer):
        writer.write(
            b"GET /who HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
            b"GET /who HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        data = await read_until_closed(reader)
    assert data.count(b"HTTP/1.1 200") == 1
    assert b"connection: close" in data


@pytest.mark.parametrize(
    ("raw", "target", "host"),
    [
        # absolute-form routes by its authority; the app gets origin-form and that Host
        (
            b"GET http://app.test/headers?q=1 HTTP/1.1\r\nHost: app.test\r\n\r\n",
            "/headers?q=1",
            "app.test",
        ),
        (
            b"GET HTTP://App.Test:8080/headers HTTP/1.1\r\nHost: app.test\r\n\r\n",
            "/headers",
            "App.Test:8080",
        ),
        (b"GET http://app.test/headers HTTP/1.1\r\n\r\n", "/headers", "app.test"),
        (b"GET http://app.test/headers HTTP/1.0\r\n\r\n", "/headers", "app.test"),
        # LF-only line endings (RFC 9112 2.2), on the request line and the header lines
        (b"GET /headers HTTP/1.1\nHost: app.test\nX-A: 1\n\n", "/headers", "app.test"),
        (b"GET /headers HTTP/1.1\r\nHost: app.test\nX-A: 1\r\n\n", "/headers", "app.test"),
    ],
)
async def test_request_targets_and_line_endings_that_are_accepted(
    make_origin: MakeOrigin, make_lb: MakeLB, raw: bytes, target: str, host: str
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    async with connection(lb.port) as (reader, writer):
        writer.write(raw)
        r = await asyncio.wait_for(read_response(reader), 5)
    assert r.status == 200, r.body
    seen = r.json()
    assert seen["target"] == target
    assert seen["headers"]["host"] == host
