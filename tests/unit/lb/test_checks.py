from __future__ import annotations

import uuid

from zeitwork.lb.checks import assign, default_check, from_wire, static_check
from zeitwork.proxy.health import CheckSpec
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteBackend, RouteTable


def route(host: str, *addresses: str, check: HealthCheck | None = None) -> Route:
    return Route(
        host=host,
        release_id=uuid.uuid4(),
        health_check=check,
        backends=[RouteBackend(address=a) for a in addresses],
    )


def test_a_release_check_maps_field_by_field() -> None:
    check = HealthCheck(
        type="http",
        path="/healthz",
        host="app.internal",
        port=9000,
        expected_status_min=200,
        expected_status_max=204,
        interval=3,
        timeout=0.5,
        healthy_threshold=2,
        unhealthy_threshold=4,
        grace_period=60,
    )
    assert from_wire(check) == CheckSpec(
        kind="http",
        path="/healthz",
        host="app.internal",
        port=9000,
        status_min=200,
        status_max=204,
        interval=3,
        timeout=0.5,
        rise=2,
        fall=4,
    )


def test_the_default_release_check_is_tcp_on_the_app_port() -> None:
    spec = from_wire(HealthCheck())
    assert spec.kind == "tcp"
    assert spec.port is None  # the backend's own port
    assert (spec.interval, spec.timeout, spec.rise, spec.fall) == (5.0, 2.0, 1, 3)


def test_none_stays_none() -> None:
    assert from_wire(HealthCheck(type="none")).kind == "none"


def test_each_backend_gets_the_check_of_the_first_route_that_carries_one() -> None:
    web = HealthCheck(type="http", path="/ready")
    api = HealthCheck(type="tcp", interval=1)
    table = RouteTable(
        version=3,
        routes=[
            route("plain.test", "10.0.0.9:80"),  # no check: the balancer's default
            route("web.test", "10.0.0.1:80", "10.0.0.2:80", check=web),
            route("web.test", "10.0.0.1:80", check=api),  # a later route does not win
            route("api.test", "10.0.0.3:80", check=api),
        ],
        default_backends=[RouteBackend(address="10.0.0.8:80")],
    )
    checks = assign(table)
    assert checks == {
        "10.0.0.1:80": from_wire(web),
        "10.0.0.2:80": from_wire(web),
        "10.0.0.3:80": from_wire(api),
    }


def test_static_backends_use_lb_health_path_only_when_set() -> None:
    own = default_check(interval=2, timeout=1, rise=2, fall=3)
    assert own == CheckSpec(kind="tcp", interval=2, timeout=1, rise=2, fall=3)
    assert static_check(own, path=None) == own
    assert static_check(own, path="/health") == CheckSpec(
        kind="http", path="/health", interval=2, timeout=1, rise=2, fall=3
    )
