"""The load balancer's router turns a route's limits (the current release's response and
tunnel idle timeouts, its tunnel count) into its pool's, and back to the engine's own when
the table drops them."""

from __future__ import annotations

import uuid

from zeitwork.lb.router import BackendRegistry, RouteTableRouter
from zeitwork.proxy.backends import Pool
from zeitwork.wire.routes import Route, RouteTable
from zeitwork.wire.routes import RouteBackend as WireBackend


def route(host: str, prefix: str = "/", **limits: float | int | None) -> Route:
    return Route(
        host=host,
        path_prefix=prefix,
        release_id=uuid.uuid4(),
        backends=[WireBackend(address="10.0.0.1:80")],
        **limits,  # type: ignore[arg-type]
    )


def limits(pool: Pool | None) -> tuple[float, float, int]:
    assert pool is not None
    return pool.response_idle_timeout, pool.tunnel_idle_timeout, pool.max_tunnels


def test_each_route_gets_its_own_limits_and_a_change_reaches_the_pool() -> None:
    router = RouteTableRouter(registry=BackendRegistry())
    router.apply(
        RouteTable(
            version=1,
            routes=[
                route("slow.test", response_idle_timeout=300.0, max_tunnels=2),
                route("slow.test", "/ws", tunnel_idle_timeout=30.0),
                route("plain.test"),
            ],
        )
    )
    assert limits(router.resolve("slow.test", "/")) == (300.0, 0.0, 2)
    assert limits(router.resolve("slow.test", "/ws/x")) == (0.0, 30.0, 0)
    assert limits(router.resolve("plain.test", "/")) == (0.0, 0.0, 0)
    assert limits(router.resolve("unknown.test", "/")) == (0.0, 0.0, 0)  # the default pool

    pool = router.resolve("slow.test", "/")
    pool.tunnels = 2  # type: ignore[union-attr]  # two open: the count survives a change
    router.apply(RouteTable(version=2, routes=[route("slow.test", response_idle_timeout=5.0)]))
    again = router.resolve("slow.test", "/")
    assert again is pool
    assert limits(again) == (5.0, 0.0, 0)
    assert again.tunnels == 2
    router.apply(RouteTable(version=3, routes=[route("slow.test")]))
    assert limits(router.resolve("slow.test", "/")) == (0.0, 0.0, 0)


def test_a_pools_tunnel_places() -> None:
    pool = Pool("p")
    assert pool.take_tunnel() and pool.take_tunnel()  # no limit
    assert pool.tunnels == 2
    pool.max_tunnels = 3
    assert pool.take_tunnel()
    assert not pool.take_tunnel()
    assert pool.tunnels == 3
    pool.give_tunnel()
    assert pool.take_tunnel()
    pool.max_tunnels = 1  # lowered under the open ones: none closed, none more admitted
    assert not pool.take_tunnel()
    for _ in range(3):
        pool.give_tunnel()
    assert pool.tunnels == 0
    pool.give_tunnel()  # never below zero
    assert pool.tunnels == 0
