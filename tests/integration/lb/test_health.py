from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

from tests.integration.lb.conftest import (
    MakeLB,
    MakeOrigin,
    connection,
    eventually,
    http,
    read_response,
)


async def admin(lb_admin_port: int, path: str) -> object:
    r = await http(lb_admin_port, path=path, host="127.0.0.1")
    assert r.status == 200
    return json.loads(r.body) if path != "/metrics" else r.body.decode()


async def test_failing_health_checks_take_a_backend_out_and_rise_brings_it_back(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    a, b = await make_origin("a"), await make_origin("b")
    lb = await make_lb(
        backends=f"{a.address},{b.address}", health_interval=0.2, health_fall=2, health_rise=2
    )
    backend_a = lb.backends.backends[a.address]
    a.healthy = False
    start = a.health_hits
    await eventually(lambda: not backend_a.available, timeout=3)
    # out of rotation within two failed checks
    assert a.health_hits - start <= 3
    names = Counter([(await http(lb.port, path="/who")).body.decode() for _ in range(6)])
    assert names == {"b": 6}
    a.healthy = True
    back_from = a.health_hits
    await eventually(lambda: backend_a.available, timeout=3)
    assert a.health_hits - back_from >= 2  # the rise threshold
    names = Counter([(await http(lb.port, path="/who")).body.decode() for _ in range(6)])
    assert names == {"a": 3, "b": 3}
    rows = await admin(lb.admin_port, "/backends")
    assert {r["address"]: r["healthy"] for r in rows} == {a.address: True, b.address: True}  # type: ignore[index,union-attr]
    metrics = await admin(lb.admin_port, "/metrics")
    assert (
        f'zeitwork_lb_health_transitions_total{{backend="{a.address}",kind="active",to="down"}} 1.0'
        in metrics
    )  # type: ignore[operator]


async def test_503_problem_immediately_when_no_backend_is_healthy(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    a = await make_origin("a")
    lb = await make_lb(backends=a.address, health_interval=0.1, health_fall=1)
    a.healthy = False
    await eventually(lambda: not lb.backends.backends[a.address].available)
    started = time.monotonic()
    r = await http(lb.port, path="/who")
    assert time.monotonic() - started < 0.5
    assert r.status == 503
    assert r.header("retry-after") is not None
    assert r.header("content-type") == "application/problem+json"
    assert r.json()["status"] == 503
    health = await admin(lb.admin_port, "/health")
    assert health["status"] == "degraded"  # type: ignore[index]


async def test_no_backends_at_all_is_503(make_lb: MakeLB) -> None:
    lb = await make_lb()
    r = await http(lb.port, path="/anything")
    assert r.status == 503
    assert r.header("retry-after")


async def test_connect_failure_retries_idempotent_requests_on_another_backend(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    live = await make_origin("live")
    dead = await make_origin("dead")
    dead_address = dead.address
    await dead.stop()  # the port now refuses connections
    lb = await make_lb(
        backends=f"{dead_address},{live.address}", health_interval=60, eject_failures=100
    )
    for _ in range(6):
        r = await http(lb.port, path="/who")
        assert r.status == 200 and r.body == b"live"
    # a refused connect sent nothing: a POST is retried on the live backend too
    statuses = Counter([(await http(lb.port, "POST", "/who", body=b"x")).status for _ in range(4)])
    assert statuses == {200: 4}


async def test_a_post_the_backend_received_is_never_sent_twice(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    a, b = await make_origin("a"), await make_origin("b")
    lb = await make_lb(backends=f"{a.address},{b.address}", health_interval=60, eject_failures=100)
    for _ in range(4):
        before = a.hits + b.hits
        r = await http(lb.port, "POST", "/drop", body=b"order=1")
        assert r.status == 502  # the backend got it and vanished: it may have acted on it
        assert a.hits + b.hits - before == 1


async def test_passive_ejection_after_consecutive_5xx(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    live = await make_origin("live")
    flaky = await make_origin("flaky")
    flaky.fail_status = 500
    lb = await make_lb(
        backends=f"{flaky.address},{live.address}",
        health_interval=60,  # only passive detection in this test
        eject_failures=3,
        eject_seconds=0.5,
    )
    backend = lb.backends.backends[flaky.address]
    statuses = Counter([(await http(lb.port, path="/who")).status for _ in range(12)])
    # 3 consecutive 5xx eject it; after that only the live backend answers
    assert statuses == {500: 3, 200: 9}
    assert backend.ejected
    flaky.fail_status = None
    await eventually(lambda: backend.available, timeout=3)
    names = Counter([(await http(lb.port, path="/who")).body.decode() for _ in range(4)])
    assert names == {"flaky": 2, "live": 2}
    metrics = await admin(lb.admin_port, "/metrics")
    assert f'backend="{flaky.address}",kind="passive",to="down"' in metrics  # type: ignore[operator]


async def test_passive_ejection_of_a_refusing_backend(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    live = await make_origin("live")
    dead = await make_origin("dead")
    address = dead.address
    port = dead.port
    await dead.stop()
    lb = await make_lb(
        backends=f"{address},{live.address}",
        health_interval=60,
        eject_failures=2,
        eject_seconds=0.6,
    )
    backend = lb.backends.backends[address]
    for _ in range(4):
        assert (await http(lb.port, path="/who")).status == 200
    assert backend.ejected
    assert not backend.available
    # while ejected nothing is sent its way
    failures = backend.failures
    for _ in range(4):
        assert (await http(lb.port, path="/who")).body == b"live"
    assert backend.failures == failures
    # it comes back after the ejection period and serves again once it listens
    revived = await make_origin("revived", port=port)
    await eventually(lambda: backend.available, timeout=3)
    names = {(await http(lb.port, path="/who")).body for _ in range(4)}
    assert names == {b"live", b"revived"}
    assert revived.hits >= 1
    await asyncio.sleep(0)


async def test_503_reaches_a_client_that_is_still_uploading(make_lb: MakeLB) -> None:
    lb = await make_lb()  # no backends at all
    async with connection(lb.port) as (reader, writer):
        writer.write(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
        answer = asyncio.create_task(read_response(reader))
        for _ in range(20):  # keep sending after the answer: no reset may eat the 503
            if answer.done():
                break
            writer.write(b"x" * 65536)
            await asyncio.sleep(0.01)
        r = await asyncio.wait_for(answer, 5)
    assert r.status == 503
    assert r.header("connection") == "close"
