"""Active checks per route: the release's own check (http path / Host / port / status
range, tcp, none), and a backend the table names serving at once. Real sockets throughout."""

from __future__ import annotations

import uuid

from tests.integration.lb.conftest import MakeLB, MakeOrigin, eventually, http
from tests.integration.lb.origin import Origin
from zeitwork.lb.main import LoadBalancer
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend, RouteTable


def publish(lb: LoadBalancer, *routes: Route) -> None:
    version = (lb.router.version or 0) + 1
    lb.router.apply(RouteTable(version=version, routes=list(routes)))


def route(host: str, *origins: Origin, check: HealthCheck | None = None) -> Route:
    return Route(
        host=host,
        release_id=uuid.uuid4(),
        health_check=check,
        backends=[RouteBackend(address=o.address) for o in origins],
    )


async def test_http_check_uses_the_routes_path_host_port_and_status_range(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    app, probe = await make_origin("app"), await make_origin("probe")
    lb = await make_lb()
    check = HealthCheck(
        type="http",
        path="/ready?deep=1",
        host="check.app.test",
        port=probe.port,  # the check's own port, not the app's
        expected_status_min=200,
        expected_status_max=204,
        interval=0.1,
        timeout=0.5,
        healthy_threshold=1,
        unhealthy_threshold=2,
    )
    publish(lb, route("app.test", app, check=check))
    backend = lb.backends.backends[app.address]
    await eventually(lambda: len(probe.checks) >= 2)
    assert set(probe.checks) == {("/ready?deep=1", "check.app.test")}
    assert app.checks == [] and app.health_hits == 0  # no global /health any more
    assert backend.available and backend.last_check_detail == "GET /ready?deep=1 -> 200"

    probe.ready_status = 503
    await eventually(lambda: not backend.available, timeout=3)
    r = await http(lb.port, path="/who", host="app.test")
    assert r.status == 503 and r.json()["detail"] == "no healthy backend"

    probe.ready_status = 204  # inside the range: back after one pass (healthy_threshold 1)
    await eventually(lambda: backend.available, timeout=3)
    assert (await http(lb.port, path="/who", host="app.test")).body == b"app"

    probe.ready_status = 302  # a redirect is outside this release's range
    await eventually(lambda: not backend.available, timeout=3)
    assert backend.last_check_detail == "GET /ready?deep=1 -> 302"


async def test_tcp_check_connects_only_and_none_never_probes(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    tcp, off = await make_origin("tcp"), await make_origin("off")
    lb = await make_lb()
    publish(
        lb,
        route(
            "tcp.test",
            tcp,
            check=HealthCheck(type="tcp", interval=0.1, timeout=0.5, unhealthy_threshold=1),
        ),
        route("off.test", off, check=HealthCheck(type="none", interval=0.1)),
    )
    checked = lb.backends.backends[tcp.address]
    unchecked = lb.backends.backends[off.address]
    await eventually(lambda: tcp.connections >= 3)  # three tcp checks came round
    assert tcp.hits == 0 and tcp.health_hits == 0 and tcp.checks == []  # no HTTP sent
    assert off.connections == 0 and unchecked.last_check is None
    assert checked.last_check_detail == f"connected to :{tcp.port}"

    await tcp.stop()  # the port now refuses connections
    await eventually(lambda: not checked.available, timeout=3)
    assert checked.last_check_detail == f"connection refused on :{tcp.port}"
    await off.stop()
    assert unchecked.available  # no active check: only passive ejection could take it out


async def test_a_backend_in_the_table_serves_before_the_balancers_first_check(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    v1, v2 = await make_origin("v1"), await make_origin("v2")
    v2.ready_status = 503  # the balancer's own check would fail it...
    lb = await make_lb()
    slow_check = HealthCheck(
        type="http", path="/ready", interval=60, healthy_threshold=3, unhealthy_threshold=3
    )
    publish(lb, route("app.test", v1, check=slow_check))
    assert (await http(lb.port, path="/who", host="app.test")).body == b"v1"
    publish(lb, route("app.test", v2, check=slow_check))
    # ...but the operator listed it as healthy: it takes the very next request
    assert (await http(lb.port, path="/who", host="app.test")).body == b"v2"
    backend = lb.backends.backends[v2.address]
    await eventually(lambda: backend.last_check is not None)
    assert backend.last_check_ok is False and backend.available  # 1 failure < threshold 3


async def test_static_backends_get_a_tcp_check_without_lb_health_path(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    a = await make_origin("a")
    a.healthy = False  # its /health says 503, which nobody asks for now
    lb = await make_lb(backends=a.address, health_path=None, health_fall=1)
    backend = lb.backends.backends[a.address]
    # available once a check passed (an http check of /health never would: it says 503); a
    # first check can miss its deadline on a loaded machine, the next one comes soon after
    await eventually(lambda: backend.last_check is not None and backend.available, timeout=15)
    assert backend.check.kind == "tcp"
    assert a.health_hits == 0
    assert (await http(lb.port, path="/who")).body == b"a"


async def test_each_route_is_checked_on_its_own_interval(
    make_origin: MakeOrigin, make_lb: MakeLB
) -> None:
    fast, slow = await make_origin("fast"), await make_origin("slow")
    lb = await make_lb()
    publish(
        lb,
        route("fast.test", fast, check=HealthCheck(type="http", path="/ready", interval=0.1)),
        route("slow.test", slow, check=HealthCheck(type="http", path="/ready", interval=30)),
    )
    await eventually(lambda: len(fast.checks) >= 5)
    assert len(slow.checks) == 1  # its first check, at once; the next one is 30 s away
