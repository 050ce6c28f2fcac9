from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.integration.lb.conftest import (
    LBProcess,
    MakeLB,
    MakeOrigin,
    connection,
    read_response,
    read_until_closed,
)
from tests.integration.lb.origin import WS_GUID


async def test_chunked_upload_and_chunked_download(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    async with connection(lb.port) as (reader, writer):
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        parts = [os.urandom(n) for n in (1, 100, 70000, 5)]
        for p in parts:
            writer.write(b"%x\r\n%s\r\n" % (len(p), p))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        r = await read_response(reader)
        assert r.status == 200
        assert r.header("transfer-encoding") == "chunked"
        assert r.body == b"".join(parts)
        # the same connection keeps working
        writer.write(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_response(reader)
        assert r.body == b"alpha-beta-gamma"


async def test_content_length_body_streams_both_ways(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    async with connection(lb.port) as (reader, writer):
        writer.write(b"PUT /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(payload))
        view = memoryview(payload)
        for i in range(0, len(payload), 1 << 20):
            writer.write(view[i : i + (1 << 20)])
            await writer.drain()
        r = await read_response(reader)
        assert r.status == 200
        assert r.body == payload
        writer.write(b"GET /download/5000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_response(reader)
        assert len(r.body) == 5_000_000


async def test_expect_100_continue(make_origin: MakeOrigin, make_lb: MakeLB) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address, max_body=1000)
    async with connection(lb.port) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello world")
        r = await read_response(reader)
        assert r.status == 200 and r.body == b"hello world"
        assert "expect" not in o.last_headers  # the proxy answered the expectation itself
    # over the limit: 413 at once, without 100 Continue, and no body is read
    async with connection(lb.port) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        r = await asyncio.wait_for(read_response(reader), 3)
        assert r.status == 413


async def test_websocket_upgrade_is_tunnelled(make_origin: MakeOrigin, make_lb: MakeLB) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    key = base64.b64encode(os.urandom(16))
    async with connection(lb.port) as (reader, writer):
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % key
        )
        r = await asyncio.wait_for(read_response(reader), 3)
        assert r.status == 101
        assert r.header("upgrade") == "websocket"
        assert r.header("connection") == "upgrade"
        expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        assert r.header("sec-websocket-accept") == expected
        # a masked text frame "hi", echoed back byte for byte by the origin
        frame = b"\x81\x82" + b"\x01\x02\x03\x04" + bytes([ord("h") ^ 1, ord("i") ^ 2])
        for _ in range(3):
            writer.write(frame)
            assert await asyncio.wait_for(reader.readexactly(len(frame)), 3) == frame
        big = os.urandom(1 << 20)
        writer.write(big)
        assert await asyncio.wait_for(reader.readexactly(len(big)), 5) == big


async def test_a_backend_half_close_in_a_tunnel_reaches_the_client(
    make_origin: MakeOrigin, make_lb: MakeLB, caplog: pytest.LogCaptureFixture
) -> None:
    """The backend's FIN becomes the client's EOF; the client can still send (TCP half-close
    through the tunnel), and nothing is logged as an error."""
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    async with connection(lb.port) as (reader, writer):
        writer.write(
            b"GET /ws-half-close HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\n"
        )
        r = await asyncio.wait_for(read_response(reader, head_only=True), 3)
        assert r.status == 101
        assert await asyncio.wait_for(reader.read(), 3) == b"bye"  # then EOF
        writer.write(b"still here")
        await writer.drain()
        async with asyncio.timeout(3):
            while b"".join(o.after_half_close) != b"still here":
                await asyncio.sleep(0.02)
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_upgrade_refused_by_backend_is_a_normal_answer(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    async with connection(lb.port) as (reader, writer):
        writer.write(
            b"GET /who HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        r = await asyncio.wait_for(read_response(reader), 3)
        assert r.status == 200 and r.body == b"o"
        assert r.header("connection") == "close"


async def test_a_client_that_stops_reading_holds_back_the_backend(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    # back-pressure through the queued output: while the client reads nothing, what the
    # balancer holds for it stays bounded and the backend is paused; then all of it arrives
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    total = 64 * 1024 * 1024
    async with connection(lb.port) as (reader, writer):
        writer.write(b"GET /download/%d HTTP/1.1\r\nHost: a\r\n\r\n" % total)
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(1.0)  # not reading: kernel buffers fill, then the balancer's
        (client,) = lb.proxy.connections
        assert client.transport is not None
        held = client.out_bytes + client.transport.get_write_buffer_size()
        assert held < 2 * 1024 * 1024, held
        ex = client.ex
        assert ex is not None and ex.upstream is not None and ex.upstream.transport is not None
        assert not ex.upstream.transport.is_reading()  # the backend side is paused
        received = 0
        while received < total:
            chunk = await reader.read(1 << 20)
            assert chunk
            received += len(chunk)
        assert received == total


# -- timeouts by inactivity ----------------------------------------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_origin(handler: Handler) -> AsyncIterator[str]:
    """A backend written byte by byte (for stalls and trickles the test origin cannot do)."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()


async def _trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # an SSE-like stream: one event byte every 0.5 s, seven of them (3.5 s in all)
    await reader.readuntil(b"\r\n\r\n")
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    for i in range(7):
        writer.write(b"1\r\n%d\r\n" % i)
        await writer.drain()
        await asyncio.sleep(0.5)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def _stall_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    await writer.drain()
    await reader.read()  # then nothing, until the balancer gives up


async def _never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    await reader.read()


@pytest.mark.slow
async def test_a_response_that_keeps_trickling_is_never_cut(make_lb: MakeLB) -> None:
    # every timeout is 1 s, the stream lasts 3.5 s: only inactivity ends an exchange
    async with raw_origin(_trickle) as address:
        lb = await make_lb(
            backends=address, first_byte_timeout=1.0, stream_idle_timeout=1.0, idle_timeout=1.0
        )
        async with connection(lb.port) as (reader, writer):
            started = time.monotonic()
            writer.write(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
            r = await asyncio.wait_for(read_response(reader), 10)
            assert r.status == 200
            assert r.body == b"0123456"
            assert time.monotonic() - started > 3.0


@pytest.mark.slow
async def test_a_slow_upload_that_keeps_moving_arrives_whole(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address, first_byte_timeout=1.0, stream_idle_timeout=1.0)
    payload = b"abcdefg"
    async with connection(lb.port) as (reader, writer):
        started = time.monotonic()
        writer.write(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n")
        for i in range(len(payload)):
            writer.write(payload[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.4)
        r = await asyncio.wait_for(read_response(reader), 10)
        assert r.status == 200
        assert r.body == payload
        assert time.monotonic() - started > 2.5


async def test_a_backend_that_never_answers_is_cut_with_504(make_lb: MakeLB) -> None:
    async with raw_origin(_never_answer) as address:
        lb = await make_lb(backends=address, first_byte_timeout=0.5, eject_failures=100)
        async with connection(lb.port) as (reader, writer):
            started = time.monotonic()
            writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            r = await asyncio.wait_for(read_response(reader), 5)
            elapsed = time.monotonic() - started
        assert r.status == 504
        assert r.header("content-type") == "application/problem+json"
        assert 0.4 < elapsed < 2.0


async def test_a_body_that_stalls_after_the_head_is_cut(make_lb: MakeLB) -> None:
    async with raw_origin(_stall_after_head) as address:
        lb = await make_lb(backends=address, stream_idle_timeout=0.5)
        async with connection(lb.port) as (reader, writer):
            started = time.monotonic()
            writer.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            data = await read_until_closed(reader, timeout=5)
            elapsed = time.monotonic() - started
        assert data.startswith(b"HTTP/1.1 200")
        assert b"5\r\nfirst\r\n" in data
        assert not data.endswith(b"0\r\n\r\n")  # cut: the client sees the truncation
        assert 0.4 < elapsed < 2.0


async def test_a_request_body_that_stalls_is_408(make_lb: MakeLB) -> None:
    # the backend waits for the whole body (it answers nothing before): the client stalls
    async with raw_origin(_never_answer) as address:
        lb = await make_lb(backends=address, stream_idle_timeout=0.5)
        async with connection(lb.port) as (reader, writer):
            started = time.monotonic()
            writer.write(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly-ten!!")
            r = await asyncio.wait_for(read_response(reader), 5)
            elapsed = time.monotonic() - started
    assert r.status == 408
    assert r.json()["detail"] == "the request body stalled"
    assert 0.4 < elapsed < 2.0


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_neither_stops_the_balancer_nor_cuts_a_stream(
    lb_process: Callable[..., LBProcess], workers: str
) -> None:
    async with raw_origin(_trickle) as address:
        lb = await asyncio.to_thread(lb_process, LB_BACKENDS=address, LB_WORKERS=workers)
        async with connection(lb.port) as (reader, writer):
            writer.write(b"GET /events HTTP/1.1\r\nHost: a\r\n\r\n")
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # the stream is open
            lb.proc.send_signal(signal.SIGHUP)
            body = b""
            while True:  # the rest of the chunked stream, across the reload
                size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).strip(), 16)
                if size == 0:
                    break
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        assert len(body) == 7  # every event, the first ones before the SIGHUP too
        assert lb.proc.poll() is None
        log = lb.log.read_text()
        assert log.count('"lb.reloaded"') == int(workers), log
