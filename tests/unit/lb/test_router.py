from __future__ import annotations

import uuid

from zeitwork.lb.checks import from_wire
from zeitwork.lb.router import BackendRegistry, RouteTableRouter, pool_name, route_of_pool
from zeitwork.proxy.health import CheckSpec
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.routes import Route, RouteTable
from zeitwork.wire.routes import RouteBackend as WireBackend


def route(host: str, *addresses: str, prefix: str = "/", algorithm: str | None = None) -> Route:
    return Route(
        host=host,
        path_prefix=prefix,
        deployment_id=uuid.uuid4(),
        algorithm=algorithm,  # type: ignore[arg-type]
        backends=[WireBackend(address=a) for a in addresses],
    )


def addresses(pool: object) -> list[str]:
    return [b.address for b in pool.backends]  # type: ignore[attr-defined]


def test_host_and_prefix_routing_with_default_pool() -> None:
    router = RouteTableRouter(registry=BackendRegistry())
    router.apply(
        RouteTable(
            version=1,
            routes=[
                route("app.example.com", "10.0.0.1:80"),
                route("app.example.com", "10.0.0.2:80", prefix="/api"),
                route("*.preview.example.com", "10.0.0.3:80"),
            ],
            default_backends=[WireBackend(address="10.0.0.9:80")],
        )
    )
    assert addresses(router.resolve("app.example.com", "/")) == ["10.0.0.1:80"]
    assert addresses(router.resolve("app.example.com", "/api")) == ["10.0.0.2:80"]
    assert addresses(router.resolve("app.example.com", "/api/v1")) == ["10.0.0.2:80"]
    assert addresses(router.resolve("app.example.com", "/apix")) == ["10.0.0.1:80"]
    assert addresses(router.resolve("pr-1.preview.example.com", "/")) == ["10.0.0.3:80"]
    assert addresses(router.resolve("unknown.example.com", "/")) == ["10.0.0.9:80"]


def test_static_backends_override_table_default() -> None:
    router = RouteTableRouter(registry=BackendRegistry(), static_backends=["10.1.0.1:80"])
    router.apply(
        RouteTable(version=1, routes=[], default_backends=[WireBackend(address="10.0.0.9:80")])
    )
    assert addresses(router.resolve("x", "/")) == ["10.1.0.1:80"]


def test_apply_touches_only_what_changed_and_drains_removed_backends() -> None:
    registry = BackendRegistry()
    router = RouteTableRouter(registry=registry)
    r1 = route("a.test", "10.0.0.1:80", "10.0.0.2:80")
    r2 = route("b.test", "10.0.0.3:80")
    result = router.apply(RouteTable(version=1, routes=[r1, r2]))
    assert (result.added, result.changed, result.removed) == (2, 0, 0)
    pool_a = router.resolve("a.test", "/")
    pool_b = router.resolve("b.test", "/")
    kept = registry.backends["10.0.0.1:80"]
    removed = registry.backends["10.0.0.2:80"]

    r1_new = r1.model_copy(update={"backends": [WireBackend(address="10.0.0.1:80")]})
    result = router.apply(RouteTable(version=2, routes=[r1_new, r2]))
    assert (result.added, result.changed, result.removed, result.drained) == (0, 1, 0, 1)
    assert router.resolve("a.test", "/") is pool_a  # same pool object, updated in place
    assert router.resolve("b.test", "/") is pool_b
    assert registry.backends["10.0.0.1:80"] is kept  # health state kept
    assert removed.draining
    assert "10.0.0.2:80" not in registry.backends

    result = router.apply(RouteTable(version=3, routes=[r1_new]))
    assert (result.removed, result.drained) == (1, 1)
    assert router.resolve("b.test", "/") is router.default
    assert router.version == 3


def test_backend_shared_by_routes_is_one_object() -> None:
    registry = BackendRegistry()
    router = RouteTableRouter(registry=registry)
    router.apply(
        RouteTable(
            version=1, routes=[route("a.test", "10.0.0.1:80"), route("b.test", "10.0.0.1:80")]
        )
    )
    a = router.resolve("a.test", "/")
    b = router.resolve("b.test", "/")
    assert a is not None and b is not None
    assert a.backends[0] is b.backends[0]
    router.apply(RouteTable(version=2, routes=[route("b.test", "10.0.0.1:80")]))
    assert not registry.backends["10.0.0.1:80"].draining


def test_per_route_algorithm() -> None:
    router = RouteTableRouter(registry=BackendRegistry(), algorithm="round-robin")
    router.apply(
        RouteTable(version=1, routes=[route("a.test", "10.0.0.1:80", algorithm="ip-hash")])
    )
    pool = router.resolve("a.test", "/")
    assert pool is not None and pool.algorithm == "ip-hash"
    assert router.default.algorithm == "round-robin"


def test_a_bad_backend_address_is_skipped_not_fatal() -> None:
    router = RouteTableRouter(registry=BackendRegistry())
    result = router.apply(
        RouteTable(
            version=3,
            routes=[route("app.example.com", "[x:8080", "10.0.0.1:80", "10.0.0.2:99999")],
            default_backends=[WireBackend(address="nonsense"), WireBackend(address="10.0.0.9:80")],
        )
    )
    assert result.version == 3
    assert addresses(router.resolve("app.example.com", "/")) == ["10.0.0.1:80"]
    assert addresses(router.resolve("other.example.com", "/")) == ["10.0.0.9:80"]


def test_backends_get_their_route_check_and_follow_a_change() -> None:
    own = CheckSpec(kind="tcp", interval=2)
    static = CheckSpec(kind="http", path="/health")
    registry = BackendRegistry(check=own)
    router = RouteTableRouter(
        registry=registry, static_backends=["10.1.0.1:80"], static_check=static
    )
    ready = HealthCheck(type="http", path="/ready", port=9000)
    app = route("app.test", "10.0.0.1:80", "10.1.0.1:80").model_copy(update={"health_check": ready})
    router.apply(
        RouteTable(
            version=1,
            routes=[app, route("plain.test", "10.0.0.2:80")],
        )
    )
    checks = {a: b.check for a, b in registry.backends.items()}
    assert checks == {
        "10.0.0.1:80": from_wire(ready),
        "10.1.0.1:80": from_wire(ready),  # a route's check wins over the static one
        "10.0.0.2:80": own,
    }
    # the release changes its check: the same backends switch
    router.apply(
        RouteTable(
            version=2,
            routes=[app.model_copy(update={"health_check": HealthCheck(type="none")})],
        )
    )
    assert registry.backends["10.0.0.1:80"].check.kind == "none"
    assert registry.backends["10.1.0.1:80"].check.kind == "none"
    router.apply(RouteTable(version=3, routes=[]))
    assert registry.backends["10.1.0.1:80"].check == static  # back to LB_HEALTH_PATH
    assert set(registry.backends) == {"10.1.0.1:80"}


def test_a_backend_in_the_table_takes_traffic_at_once() -> None:
    registry = BackendRegistry(rise=5, fall=5)
    router = RouteTableRouter(registry=registry)
    router.apply(RouteTable(version=1, routes=[route("app.test", "10.0.0.1:80")]))
    pool = router.resolve("app.test", "/")
    assert pool is not None
    picked = pool.pick("1.2.3.4")
    assert picked is not None and picked.address == "10.0.0.1:80"
    assert picked.last_check is None  # no check has run


def test_removed_backend_is_drained_and_pools_are_named_by_route() -> None:
    registry = BackendRegistry()
    router = RouteTableRouter(registry=registry)
    router.apply(
        RouteTable(
            version=1,
            routes=[
                route("app.test", "10.0.0.1:80"),
                route("app.test", "10.0.0.1:80", prefix="/api"),
                route("*.preview.test", "10.0.0.2:80"),
            ],
        )
    )
    names = sorted(p.name for p in router.pools())
    assert names == ["*.preview.test", "app.test", "app.test/api", "default"]
    assert [route_of_pool(n) for n in names] == ["*.preview.test", "app.test", "app.test", None]
    assert route_of_pool("-") is None  # refused before routing
    old = registry.backends["10.0.0.2:80"]
    result = router.apply(RouteTable(version=2, routes=[route("app.test", "10.0.0.1:80")]))
    assert result.drained == 1 and result.removed == 2
    assert old.draining and not old.available
    assert pool_name("app.test", "/") == "app.test"
    assert pool_name("app.test", "/api") == "app.test/api"
