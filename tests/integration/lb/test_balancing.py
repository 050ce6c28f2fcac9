from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.integration.lb.conftest import (
    MakeLB,
    MakeOrigin,
    connection,
    eventually,
    http,
    read_response,
)


async def test_round_robin_spreads_evenly_over_real_backends(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    origins = [await make_origin(f"o{i}") for i in range(3)]
    lb = await make_lb(backends=",".join(o.address for o in origins))
    seen = Counter()
    for _ in range(30):
        r = await http(lb.port, path="/who")
        assert r.status == 200
        seen[r.body.decode()] += 1
    assert seen == {"o0": 10, "o1": 10, "o2": 10}


async def test_keep_alive_connection_is_balanced_per_request(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    origins = [await make_origin(f"o{i}") for i in range(2)]
    lb = await make_lb(backends=",".join(o.address for o in origins))
    async with connection(lb.port) as (reader, writer):
        names = []
        for _ in range(6):
            writer.write(b"GET /who HTTP/1.1\r\nHost: a\r\n\r\n")
            r = await read_response(reader)
            assert r.header("connection") is None  # keep-alive is the HTTP/1.1 default
            names.append(r.body.decode())
    assert Counter(names) == {"o0": 3, "o1": 3}
    # upstream connections are pooled: far fewer than requests
    assert sum(o.app_connections for o in origins) <= 2


async def test_least_connections_avoids_the_busy_backend(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    a, b = await make_origin("a"), await make_origin("b")
    lb = await make_lb(backends=f"{a.address},{b.address}", algorithm="least-connections")
    slow = [asyncio.create_task(http(lb.port, path="/slow/1.5")) for _ in range(2)]
    await eventually(lambda: a.hits + b.hits == 2)  # both in flight
    assert {"a": a.hits, "b": b.hits} == {"a": 1, "b": 1}  # one per backend
    slow.append(asyncio.create_task(http(lb.port, path="/slow/1.5")))
    await eventually(lambda: a.hits + b.hits == 3)
    # one backend now has 2 in flight: quick requests all go to the other one
    quick = [(await http(lb.port, path="/who")).body.decode() for _ in range(4)]
    assert len(set(quick)) == 1
    for t in slow:
        assert (await t).status == 200


async def test_ip_hash_sticks_to_client_ip_not_port(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    origins = [await make_origin(f"o{i}") for i in range(3)]
    lb = await make_lb(
        backends=",".join(o.address for o in origins),
        algorithm="ip-hash",
        trusted_proxies="127.0.0.1",
    )
    # many connections (different source ports) from one address -> one backend
    names = {(await http(lb.port, path="/who")).body.decode() for _ in range(8)}
    assert len(names) == 1
    # behind a trusted proxy the forwarded client address is the key
    by_client = {}
    for i in range(40):
        ip = f"198.51.100.{i}"
        first = (await http(lb.port, path="/who", headers={"X-Forwarded-For": ip})).body
        again = (await http(lb.port, path="/who", headers={"X-Forwarded-For": ip})).body
        assert first == again
        by_client[ip] = first
    assert len(set(by_client.values())) == 3


async def test_forwarding_headers_from_an_untrusted_client(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    r = await http(
        lb.port,
        path="/headers?q=1",
        host="App.Test:8082",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Real-IP": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.test",
            "Connection": "close, X-Secret",
            "X-Secret": "do-not-forward",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic x",
        },
    )
    sent = r.json()["headers"]
    assert r.json()["target"] == "/headers?q=1"
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-real-ip"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == "app.test"
    assert sent["host"] == "App.Test:8082"
    for gone in ("x-secret", "keep-alive", "proxy-authorization", "connection"):
        assert gone not in sent
    request_id = sent["x-request-id"]
    assert request_id and r.header("x-request-id") == request_id


async def test_forwarding_headers_from_a_trusted_proxy(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address, trusted_proxies="127.0.0.0/8")
    r = await http(
        lb.port,
        path="/headers",
        headers={
            "X-Forwarded-For": "203.0.113.5",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "shop.example",
            "X-Request-Id": "edge-abc-123",
        },
    )
    sent = r.json()["headers"]
    assert sent["x-forwarded-for"] == "203.0.113.5, 127.0.0.1"
    assert sent["x-real-ip"] == "203.0.113.5"
    assert sent["x-forwarded-proto"] == "https"
    assert sent["x-forwarded-host"] == "shop.example"
    assert sent["x-request-id"] == "edge-abc-123"


async def test_response_connection_headers_are_rebuilt(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    async with connection(lb.port) as (reader, writer):
        writer.write(b"GET /conn-listed HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_response(reader)
        names = {k.lower() for k, _ in r.headers}
        assert "x-hop" not in names  # listed in the backend's Connection header
        assert "keep-alive" not in names
        assert "connection" not in names
        assert r.header("x-origin") == "o"
        # HTTP/1.0 client with keep-alive gets an explicit keep-alive answer
        writer.write(b"GET /who HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        r = await read_response(reader)
        assert r.header("connection") == "keep-alive"
        assert r.body == b"o"
        # the client's Connection: close is honoured even though the backend keeps alive
        writer.write(b"GET /who HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        r = await read_response(reader)
        assert r.header("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 2) == b""


async def test_head_and_backend_close_and_until_close_bodies(
    make_origin: MakeOrigin, make_lb: MakeLB, caplog: pytest.LogCaptureFixture
) -> None:
    o = await make_origin("o")
    lb = await make_lb(backends=o.address)
    async with connection(lb.port) as (reader, writer):
        writer.write(b"HEAD /who HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_response(reader, head_only=True)
        assert r.status == 200 and r.header("content-length") == "1"
        writer.write(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_response(reader)
        assert r.body == b"bye\r\n"
        writer.write(b"GET /nolength HTTP/1.1\r\nHost: a\r\n\r\n")
        r = await read_response(reader)
        assert r.header("transfer-encoding") == "chunked"  # re-framed for the 1.1 client
        assert r.body == b"until-close body"
        writer.write(b"GET /who HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(reader)).body == b"o"
    # the backends' FINs are ordinary: nothing logged as an error
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


async def test_pipelined_requests_answer_in_order(make_origin: MakeOrigin, make_lb: MakeLB) -> None:
    a, b = await make_origin("a"), await make_origin("b")
    lb = await make_lb(backends=f"{a.address},{b.address}")
    async with connection(lb.port) as (reader, writer):
        writer.write(
            b"GET /slow/0.2 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /who HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        first = await read_response(reader)
        second = await read_response(reader)
        third = await read_response(reader)
    assert first.body.endswith(b"slow")
    assert second.body in (b"a", b"b")
    assert third.body == b"alpha-beta-gamma"
