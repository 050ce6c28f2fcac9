"""Per-route request figures under real traffic: ``GET /stats/routes`` (JSON totals for the
operator) and the ``zeitwork_lb_route_*`` Prometheus series, one worker and several."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.lb.conftest import LBProcess, MakeLB, MakeOrigin, eventually, http
from zeitwork.wire.routes import Route, RouteBackend, RouteTable

StartLB = Callable[..., LBProcess]


async def stats(admin_port: int) -> dict[str, Any]:
    r = await http(admin_port, path="/stats/routes", host="127.0.0.1")
    assert r.status == 200 and r.header("content-type") == "application/json"
    body: dict[str, Any] = r.json()
    return body


def table(version: int, app: str, fallback: str) -> RouteTable:
    return RouteTable(
        version=version,
        routes=[
            Route(host="app.test", release_id=uuid.uuid4(), backends=[RouteBackend(address=app)])
        ],
        default_backends=[RouteBackend(address=fallback)],
    )


async def test_requests_are_counted_per_route_by_class_with_bytes_and_latency(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    app, fallback = await make_origin("app"), await make_origin("fallback")
    lb = await make_lb(eject_failures=100)
    lb.router.apply(table(1, app.address, fallback.address))
    for _ in range(3):
        assert (await http(lb.port, path="/who", host="app.test")).status == 200
    assert (await http(lb.port, path="/status/404", host="app.test")).status == 404
    assert (await http(lb.port, path="/status/503", host="app.test")).status == 503
    body = b"x" * 1000
    echoed = await http(lb.port, "POST", "/echo", host="app.test", body=body)
    assert echoed.body == body
    for host in ("unknown.test", "scanner.example"):  # served by the default pool
        assert (await http(lb.port, path="/who", host=host)).body == b"fallback"

    data = await stats(lb.admin_port)
    assert set(data["routes"]) == {"app.test", "other"}  # unknown hosts never get a label
    route = data["routes"]["app.test"]
    assert route["requests"] == 6
    assert route["status"] == {"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 1, "5xx": 1}
    assert route["bytes_in"] == 1000
    assert route["bytes_out"] == 3 * len(b"app") + 1000
    assert route["latency"]["count"] == 6
    assert len(route["latency"]["counts"]) == len(data["latency_bounds"]) + 1
    assert 0 < route["latency"]["sum"] < 5
    assert data["routes"]["other"]["status"]["2xx"] == 2
    assert data["at"] >= data["started_at"]

    text = (await http(lb.admin_port, path="/metrics", host="127.0.0.1")).body.decode()
    assert 'zeitwork_lb_route_requests_total{class="2xx",route="app.test"} 4.0' in text
    assert 'zeitwork_lb_route_requests_total{class="5xx",route="app.test"} 1.0' in text
    assert 'zeitwork_lb_route_requests_total{class="2xx",route="other"} 2.0' in text
    assert 'zeitwork_lb_route_bytes_total{direction="in",route="app.test"} 1000.0' in text
    assert 'zeitwork_lb_route_upstream_latency_seconds_count{route="app.test"} 6.0' in text

    # a host that leaves the table: its later requests are "other", its totals stay
    lb.router.apply(
        RouteTable(version=2, routes=[], default_backends=[RouteBackend(address=fallback.address)])
    )
    await http(lb.port, path="/who", host="app.test")
    later = await stats(lb.admin_port)
    assert later["routes"]["app.test"]["requests"] == 6
    assert later["routes"]["other"]["requests"] == 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
async def test_figures_of_all_workers_are_merged(
    make_origin: MakeOrigin, lb_process: StartLB, tmp_path: Any
) -> None:
    app, fallback = await make_origin("app"), await make_origin("fallback")
    cache = tmp_path / "routes.json"
    cache.write_text(table(1, app.address, fallback.address).model_dump_json())
    lb = await asyncio.to_thread(
        lb_process,
        LB_WORKERS="2",
        LB_CACHE_FILE=str(cache),  # both workers serve the cached table ...
        OPERATOR_URL=f"http://127.0.0.1:{_closed_port()}",  # ... the operator being down
        ZEITWORK_PROXY_TOKEN="t",
    )
    for _ in range(40):  # new connections: the kernel spreads them over both workers
        assert (await http(lb.port, path="/who", host="app.test")).body == b"app"

    async def all_counted() -> bool:
        data = await stats(lb.admin_port)
        return data["routes"].get("app.test", {}).get("requests") == 40

    await eventually(all_counted, timeout=5)  # the others publish every second
    text = (await http(lb.admin_port, path="/metrics", host="127.0.0.1")).body.decode()
    assert 'zeitwork_lb_route_requests_total{class="2xx",route="app.test"} 40.0' in text
    assert app.hits == 40
