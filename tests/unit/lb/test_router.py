from __future__ import annotations

import uuid

from zeitwork.lb.router import BackendRegistry, RouteTableRouter
from zeitwork.wire.routes import Backend as WireBackend
from zeitwork.wire.routes import Route, RouteTable


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
