"""Per-route limits at the edge: a route's response and tunnel idle timeouts (its release's,
in the operator's route table) replace the edge's global ones for that route, so a route that
allows a long stall or a long idle WebSocket is not cut at the edge first. A real edge taking
the table from an operator (a stub serving ``/api/v1/routes``), a real load balancer, a real
origin and a real WebSocket server; the edge's own timeouts are 1 s, the balancer's 60 s."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.edge.conftest import upstream  # noqa: F401
from tests.integration.lb.conftest import (  # noqa: F401  (the fixtures)
    MakeLB,
    MakeOrigin,
    eventually,
    http,
    make_lb,
    make_origin,
)
from tests.integration.lb.test_discovery import TOKEN, MakeOperator, make_operator  # noqa: F401
from tests.integration.lb.test_route_limits import Echo, echo  # noqa: F401
from zeitwork.edge.certificates.store import LocalStore
from zeitwork.edge.main import Edge
from zeitwork.edge.settings import EdgeSettings
from zeitwork.settings import parse_settings
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend

QUIET = HealthCheck(type="tcp", interval=60, unhealthy_threshold=3)
LONG = {"response_idle_timeout": 10.0, "tunnel_idle_timeout": 10.0}


def route(host: str, address: str, **limits: Any) -> Route:
    return Route(
        host=host,
        deployment_id=uuid.uuid4(),
        release_id=uuid.uuid4(),
        health_check=QUIET,
        backends=[RouteBackend(address=address)],
        **limits,
    )


@pytest.fixture
async def edges() -> AsyncIterator[list[Edge]]:
    started: list[Edge] = []
    yield started
    for edge in started:
        await edge.stop()


@pytest.mark.slow
async def test_a_routes_idle_timeouts_apply_at_the_edge(
    make_operator: MakeOperator,  # noqa: F811
    make_lb: MakeLB,  # noqa: F811
    make_origin: MakeOrigin,  # noqa: F811
    echo: Echo,  # noqa: F811
    edges: list[Edge],
    tmp_path: Path,
) -> None:
    origin = await make_origin("o")
    operator = await make_operator()
    operator.publish(
        [
            route("patient.test", origin.address, **LONG),
            route("plain.test", origin.address),
            # a path-prefix route is a route of its own: it does not take its domain's limits,
            # nor does its domain take its own
            route("mixed.test", origin.address, **LONG),
            route("mixed.test", origin.address, path_prefix="/slow"),
            route("prefixed.test", origin.address),
            route("prefixed.test", origin.address, path_prefix="/slow", **LONG),
            route("ws-patient.test", echo.address, **LONG),
            route("ws-plain.test", echo.address),
        ]
    )
    lb = await make_lb(operator_url=operator.url, token=TOKEN, eject_failures=100)
    settings = parse_settings(
        EdgeSettings,
        PORT=0,
        EDGE_HTTPS_PORT=0,
        EDGE_ADMIN_PORT=0,
        HOST="127.0.0.1",
        ZEITWORK_DATA_DIR=str(tmp_path / "data"),
        EDGE_DRAIN_TIMEOUT=1,
        EDGE_HTTPS_REDIRECT="false",  # plain HTTP served (the route hosts get certificates)
        LOAD_BALANCER_URL=f"http://127.0.0.1:{lb.port}",
        OPERATOR_URL=operator.url,  # the route table from the operator
        ZEITWORK_PROXY_TOKEN=TOKEN,
        EDGE_FIRST_BYTE_TIMEOUT=1,
        EDGE_STREAM_IDLE_TIMEOUT=1,
        EDGE_TUNNEL_IDLE_TIMEOUT=1,
    )
    edge = Edge(settings)
    edge.store = LocalStore(directory=tmp_path / "certificates")  # the stub has no store
    await edge.start()
    edges.append(edge)
    await eventually(lambda: lb.router.version == operator.table.version, timeout=20)
    assert edge.route_watch is not None
    watch = edge.route_watch
    await eventually(lambda: watch.version == operator.table.version, timeout=20)
    assert len(watch.limit_pools) == 1  # both routes with limits share one pool
    port = edge.ports["http"]

    async def timed(host: str, path: str) -> tuple[int, float, bytes]:
        started = time.monotonic()
        r = await http(port, "GET", path, host=host)
        return r.status, time.monotonic() - started, r.body

    # 2.5 s before the head: past the edge's 1 s, inside the route's 10 s
    patient, plain, mixed, prefixed = await asyncio.gather(
        timed("patient.test", "/slow/2.5"),
        timed("plain.test", "/slow/2.5"),
        timed("mixed.test", "/slow/2.5"),
        timed("prefixed.test", "/slow/2.5"),
    )
    assert patient[0] == 200 and patient[2] == b"o slow", patient
    assert prefixed[0] == 200 and prefixed[2] == b"o slow", prefixed
    # the edge's own first-byte timeout (the balancer's are 60 s; a cut after 2.5 s would
    # have let the answer through)
    assert plain[0] == 504 and plain[1] < 2.5, plain
    assert mixed[0] == 504 and mixed[1] < 2.5, mixed

    # a WebSocket idle for 2.5 s: kept on the route with a tunnel idle timeout of 10 s,
    # closed (1001) by the edge's own 1 s on the other
    async def idle_then_echo(host: str) -> str:
        async with connect(
            f"ws://{host}/ws", host="127.0.0.1", port=port, ping_interval=None, open_timeout=10
        ) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), 10) == "hello"
            await asyncio.sleep(2.5)
            try:
                await ws.send("still here")
                return str(await asyncio.wait_for(ws.recv(), 10))
            except ConnectionClosed as closed:
                return f"closed {closed.rcvd.code if closed.rcvd else None}"

    kept, cut = await asyncio.gather(
        idle_then_echo("ws-patient.test"), idle_then_echo("ws-plain.test")
    )
    assert kept == "still here"
    assert cut == "closed 1001"
