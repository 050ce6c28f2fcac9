from __future__ import annotations

import asyncio

import pytest

from zeitwork.core.errors import ServiceUnavailable
from zeitwork.edge.policy import DomainPolicy, EdgePolicy
from zeitwork.edge.rate_limit import Quota, RateLimiter
from zeitwork.edge.routes import RouteWatch, policies_for
from zeitwork.edge.security_headers import SecurityHeaders, SecurityHeadersConfig
from zeitwork.proxy.backends import Backend, Pool
from zeitwork.proxy.types import ClientInfo, RequestHead
from zeitwork.wire.routes import Route, RouteBackend, RouteTable

DEFAULT = DomainPolicy(
    quota=Quota(rps=100, burst=200), cors=None, security=SecurityHeaders(SecurityHeadersConfig())
)


def _route(
    host: str, prefix: str = "/", rps: float | None = None, burst: int | None = None
) -> Route:
    return Route(
        host=host,
        path_prefix=prefix,
        backends=[RouteBackend(address="10.0.0.1:80")],
        rate_limit_rps=rps,
        rate_limit_burst=burst,
    )


def test_policies_for_routes() -> None:
    table = RouteTable(
        version=3,
        routes=[
            _route("a.test"),
            _route("B.test", rps=5),
            _route("b.test", "/api", rps=1, burst=1),
            _route("b.test", "/api/bulk", rps=50, burst=60),
            _route("c.test", rps=float("nan")),
        ],
    )
    routes = policies_for(table, default=DEFAULT, static={})
    assert routes.hosts == {"a.test", "b.test", "c.test"}
    assert "a.test" not in routes.domains and "c.test" not in routes.domains
    b = routes.domains["b.test"]
    assert (b.quota.rps, b.quota.burst, b.limit_key) == (5, 10, "|b.test")
    prefixes = routes.prefixes["b.test"]
    assert [p for p, _ in prefixes] == ["/api/bulk", "/api"]  # longest first
    assert prefixes[1][1].quota.burst == 1 and prefixes[1][1].limit_key == "|b.test/api"


def _edge_policy() -> EdgePolicy:
    return EdgePolicy(
        default=DEFAULT,
        limiter=RateLimiter(),
        has_certificate=lambda h: False,
        challenge_answer=lambda t: None,
        https_port=443,
        clock=lambda: 0.0,
    )


def _head(host: str, path: str) -> RequestHead:
    return RequestHead(
        method=b"GET", target=path.encode(), path=path, host=host, http_version="1.1", headers=[]
    )


class Source:
    def __init__(self, tables: list[RouteTable | Exception]) -> None:
        self.tables = tables
        self.calls: list[tuple[int | None, float]] = []

    async def fetch(self, *, version: int | None = None, wait: float = 0.0) -> RouteTable:
        self.calls.append((version, wait))
        if not self.tables:
            await asyncio.sleep(3600)
        item = self.tables.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


async def _run_until_version(watch: RouteWatch, version: int) -> None:
    """Run the watch until it has applied table ``version`` (5 s at most), then stop it."""
    task = asyncio.create_task(watch.run())
    try:
        async with asyncio.timeout(5):
            while watch.version != version:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()


async def test_route_watch_applies_overrides_and_hosts() -> None:
    policy = _edge_policy()
    seen: list[frozenset[str]] = []
    table = RouteTable(
        version=1, routes=[_route("b.test", "/api", rps=1, burst=1), _route("a.test")]
    )
    source = Source([ServiceUnavailable("down"), table])
    watch = RouteWatch(
        source=source, policy=policy, static={}, on_hosts=seen.append, retry_max=0.01
    )
    await _run_until_version(watch, 1)
    assert seen == [frozenset({"a.test", "b.test"})]
    assert {"a.test", "b.test"} <= policy.known_hosts
    client = ClientInfo(peer_ip="1.1.1.1", client_ip="1.1.1.1", tls=True)
    assert policy.on_request(_head("b.test", "/api/x"), client) is None
    limited = policy.on_request(_head("b.test", "/api/y"), client)
    assert limited is not None and limited.status == 429
    # other paths of the host use the default quota
    assert policy.on_request(_head("b.test", "/"), client) is None
    assert source.calls[0] == (None, 0.0)


def test_only_verified_routed_hosts_get_acme_certificates() -> None:
    from zeitwork.edge.main import certificate_domains

    table = RouteTable(
        version=1,
        routes=[
            _route("mine.test").model_copy(update={"verified": True}),
            _route("claimed.test"),
        ],
    )
    routes = policies_for(table, default=DEFAULT, static={})
    assert routes.hosts == {"mine.test", "claimed.test"}
    assert routes.verified == {"mine.test"}
    kwargs = {"configured": ["edge.test"], "routed": routes.hosts, "verified": routes.verified}
    # ACME: the configured names and the verified routed hosts, never a merely claimed one
    assert certificate_domains(mode="acme", **kwargs) == ["edge.test", "mine.test"]
    # the internal CA and static files ask no outside CA: every routed host
    for mode in ("internal", "static"):
        assert certificate_domains(mode=mode, **kwargs) == [
            "claimed.test",
            "edge.test",
            "mine.test",
        ]
    # a verified host no longer routed is not kept
    assert (
        certificate_domains(
            mode="acme", configured=[], routed=frozenset(), verified=routes.verified
        )
        == []
    )


def test_route_policy_from_the_operator_sets_cors_and_headers() -> None:
    from zeitwork.wire.routes import CorsOverride, EdgePolicyOverride, HeadersOverride

    policy = EdgePolicyOverride(
        cors=CorsOverride(origins=["https://*.shop.test"]),
        headers=HeadersOverride(content_security_policy="default-src 'self'"),
    )
    table = RouteTable(
        version=2,
        routes=[
            _route("shop.test", rps=3).model_copy(update={"policy": policy}),
            _route("plain.test"),
        ],
    )
    routes = policies_for(table, default=DEFAULT, static={})
    shop = routes.domains["shop.test"]
    assert shop.cors is not None and shop.cors.config.origins == ("https://*.shop.test",)
    assert shop.security.config.content_security_policy == "default-src 'self'"
    assert shop.quota.rps == 3  # the route's rate limit keeps the domain's policy
    assert shop.security.config.hsts_max_age == DEFAULT.security.config.hsts_max_age
    assert "plain.test" not in routes.domains  # no policy, no limit: the global one


async def test_path_routes_build_on_their_domain_and_match_whole_segments() -> None:
    from zeitwork.wire.routes import CorsOverride, EdgePolicyOverride

    policy = _edge_policy()
    cors = EdgePolicyOverride(cors=CorsOverride(origins=["https://app.test"]))
    # the path route comes first in this table: it still inherits the domain's CORS policy
    table = RouteTable(
        version=1,
        routes=[
            _route("shop.test", "/login", rps=1, burst=1),
            _route("shop.test", rps=1000).model_copy(update={"policy": cors}),
        ],
    )
    watch = RouteWatch(source=Source([]), policy=policy, static={}, on_hosts=lambda h: None)
    watch.apply(table)
    (prefix, login), *_ = policy.prefixes["shop.test"]
    assert prefix == "/login" and login.cors is not None and login.quota.rps == 1
    client = ClientInfo(peer_ip="1.1.1.1", client_ip="1.1.1.1", tls=True)
    assert policy.on_request(_head("shop.test", "/login"), client) is None
    for path in ("/login", "/login/step2"):
        limited = policy.on_request(_head("shop.test", path), client)
        assert limited is not None and limited.status == 429, path
    # /loginx is another path (segment boundary), and the rest of the host has its own bucket
    for path in ("/loginx", "/", "/cart"):
        assert policy.on_request(_head("shop.test", path), client) is None, path


def test_a_bad_policy_in_the_table_is_skipped_not_fatal() -> None:
    from zeitwork.wire.routes import EdgePolicyOverride, HeadersOverride

    bad = EdgePolicyOverride.model_construct(  # as if an older operator had let it through
        headers=HeadersOverride.model_construct(frame_options="ALLOWALL")
    )
    table = RouteTable(
        version=1,
        routes=[
            _route("bad.test").model_copy(update={"policy": bad}),
            _route("good.test", rps=3),
        ],
    )
    routes = policies_for(table, default=DEFAULT, static={})
    assert routes.hosts == {"bad.test", "good.test"}
    assert "bad.test" not in routes.domains  # the edge's global policy for it
    assert routes.domains["good.test"].quota.rps == 3


async def test_route_watch_survives_a_table_it_cannot_apply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import zeitwork.edge.routes as routes_module

    policy = _edge_policy()
    seen: list[frozenset[str]] = []
    good = RouteTable(version=2, routes=[_route("a.test")])
    source = Source([RouteTable(version=1, routes=[_route("boom.test")]), good])
    real = routes_module.policies_for

    def flaky(table: RouteTable, **kwargs: object) -> object:
        if table.version == 1:
            raise RuntimeError("a bug")
        return real(table, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(routes_module, "policies_for", flaky)
    watch = RouteWatch(
        source=source, policy=policy, static={}, on_hosts=seen.append, retry_max=0.01
    )
    await _run_until_version(watch, 2)
    assert seen == [frozenset({"a.test"})]
    assert watch.last_error is None


async def test_route_watch_refreshes_the_whole_table_periodically() -> None:
    """Besides the long-poll on its version, the edge asks for the whole table every
    ``full_refresh`` s (it repairs a missed change, as the load balancer and the agent do)."""

    class Same:
        def __init__(self) -> None:
            self.calls: list[tuple[int | None, float]] = []

        async def fetch(self, *, version: int | None = None, wait: float = 0.0) -> RouteTable:
            self.calls.append((version, wait))
            if version is not None:
                await asyncio.sleep(min(wait, 0.02))  # nothing changed: the poll times out
            return RouteTable(version=1, routes=[_route("a.test")])

    source, seen = Same(), []
    watch = RouteWatch(
        source=source, policy=_edge_policy(), static={}, on_hosts=seen.append, full_refresh=0.1
    )
    task = asyncio.create_task(watch.run())
    try:
        async with asyncio.timeout(10):
            while sum(1 for version, _ in source.calls if version is None) < 3:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert (1, 1.0) in source.calls  # long-polls in between, on the version it applied
    assert len(seen) >= 3 and set(seen) == {frozenset({"a.test"})}


def test_routes_limits_become_pools_to_the_load_balancer() -> None:
    lb = Backend("127.0.0.1:8080")
    upstream = Pool("load-balancer", backends=[lb])
    policy = _edge_policy().route_to(upstream)
    watch = RouteWatch(source=Source([]), policy=policy, static={}, on_hosts=lambda h: None)

    def limited(host: str, prefix: str = "/", **limits: float) -> Route:
        return Route(
            host=host,
            path_prefix=prefix,
            backends=[RouteBackend(address="10.0.0.1:80")],
            **limits,
        )

    watch.apply(
        RouteTable(
            version=1,
            routes=[
                limited("a.test", response_idle_timeout=600, tunnel_idle_timeout=86400),
                limited("b.test", response_idle_timeout=600, tunnel_idle_timeout=86400),
                limited("c.test", tunnel_idle_timeout=30),
                limited("c.test", "/api", rps=5),  # no limits of its own: not c.test's
                limited("d.test"),
                limited("d.test", "/ws", tunnel_idle_timeout=7200),
            ],
        )
    )
    a, b, c = (policy.resolve(h, "/") for h in ("a.test", "b.test", "c.test"))
    assert a is not None and a is b and a is not upstream  # one pool per pair of values
    assert (a.response_idle_timeout, a.tunnel_idle_timeout) == (601.0, 86401.0)  # the margin
    assert c is not None and (c.response_idle_timeout, c.tunnel_idle_timeout) == (0.0, 31.0)
    assert a.backends == [lb] and c.backends == [lb]
    assert policy.resolve("c.test", "/api/x") is upstream
    assert policy.resolve("c.test", "/apix") is c
    assert policy.resolve("d.test", "/") is upstream
    ws = policy.resolve("d.test", "/ws/chat")
    assert ws is not None and ws.tunnel_idle_timeout == 7201.0
    assert policy.resolve("unknown.test", "/") is upstream
    assert len(watch.limit_pools) == 3
    # the next table: a's pool kept, the ones no route uses let go (off the backend)
    watch.apply(
        RouteTable(
            version=2,
            routes=[limited("a.test", response_idle_timeout=600, tunnel_idle_timeout=86400)],
        )
    )
    assert policy.resolve("a.test", "/") is a
    assert policy.resolve("c.test", "/") is upstream
    assert len(watch.limit_pools) == 1 and c.backends == [] and ws.backends == []
