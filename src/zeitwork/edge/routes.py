"""What the edge takes from the operator's route table: the hosts the platform serves (they
get certificates and their own metric label), per-route rate-limit overrides, and each route's
limits (its release's response and tunnel idle timeouts).

``policies_for`` is pure: a table in, the per-host and per-prefix policies out, built once per
table change (never per request). ``RouteWatch`` long-polls the table and applies it, with a
full refresh every ``full_refresh`` seconds (``serving.poll.VersionedPoll``).

A route's limits are what the load balancers apply; the edge applies them too, in place of its
global ``EDGE_FIRST_BYTE_TIMEOUT`` / ``EDGE_STREAM_IDLE_TIMEOUT`` (a response's stall) and
``EDGE_TUNNEL_IDLE_TIMEOUT``, so that a route allowing a ten-minute stall or a day-long idle
WebSocket is not cut at the edge first. Each is ``ROUTE_LIMIT_MARGIN`` longer at the edge: the
balancer, which sees the app, is the one that cuts (and logs it). The limits ride on pools to
the load balancer (``RouteLimitPools``), one per distinct pair of values, which the core's
timeouts read (``proxy.state.stall_timeout``, ``proxy.tunnel.idle_timeout``). A route's
``max_tunnels`` has no counterpart at the edge (the balancers count and refuse).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from zeitwork.edge.cors import CorsConfig, CorsPolicy
from zeitwork.edge.policy import DomainPolicy, EdgePolicy
from zeitwork.edge.rate_limit import Quota
from zeitwork.edge.security_headers import SecurityHeaders
from zeitwork.edge.settings import DomainOverride
from zeitwork.observability import get_logger
from zeitwork.proxy.backends import Pool
from zeitwork.serving.poll import RouteSource, VersionedPoll
from zeitwork.wire.routes import EdgePolicyOverride, Route, RouteTable

log = get_logger("zeitwork.edge.routes")

ROUTE_LIMIT_MARGIN = 1.0
"""Seconds the edge adds to a route's idle timeouts (the load balancer cuts first)."""


class RouteLimitPools:
    """Pools to the load balancer carrying routes' limits, one per distinct pair of values,
    reused from one table to the next (the ones no route uses any more are let go)."""

    def __init__(self, upstream: Callable[[], Pool | None]) -> None:
        self._upstream = upstream  # the edge's pool to the load balancer (None: not yet)
        self._pools: dict[tuple[float, float], Pool] = {}
        self._used: dict[tuple[float, float], Pool] = {}

    def begin(self) -> None:
        self._used = {}

    def pool_for(self, route: Route) -> Pool | None:
        """The pool with ``route``'s limits; None when it has none (the default pool)."""
        upstream = self._upstream()
        response, tunnel = route.response_idle_timeout, route.tunnel_idle_timeout
        if upstream is None or (response is None and tunnel is None):
            return None
        key = (response or 0.0, tunnel or 0.0)
        pool = self._used.get(key) or self._pools.get(key)
        if pool is None:
            pool = Pool(upstream.name, algorithm=upstream.algorithm, backends=upstream.backends)
            pool.response_idle_timeout = key[0] + ROUTE_LIMIT_MARGIN if key[0] else 0.0
            pool.tunnel_idle_timeout = key[1] + ROUTE_LIMIT_MARGIN if key[1] else 0.0
        self._used[key] = pool
        return pool

    def end(self) -> None:
        for key, pool in self._pools.items():
            if key not in self._used:
                pool.set_backends(())  # no route uses it: off the load balancer's backend
        self._pools = self._used

    def __len__(self) -> int:
        return len(self._pools)


def override_policy(
    host: str,
    override: DomainOverride | EdgePolicyOverride,
    *,
    base: DomainPolicy,
    global_security: SecurityHeaders,
) -> DomainPolicy:
    """A domain's override (an ``EDGE_DOMAIN_POLICIES`` entry, or the policy the operator
    sends in the route table) on top of ``base``; header fields left out keep the global
    values."""
    policy = base
    if override.cors is not None:
        c = override.cors
        cors = (
            CorsPolicy(
                CorsConfig(
                    origins=tuple(c.origins),
                    methods=tuple(c.methods),
                    headers=tuple(c.headers),
                    expose_headers=tuple(c.expose_headers),
                    credentials=c.credentials,
                    max_age=c.max_age,
                )
            )
            if c.origins
            else None
        )
        policy = replace(policy, cors=cors)
    if override.headers is not None:
        changes: dict[str, object] = {}
        for name, value in override.headers.model_dump(exclude_none=True).items():
            if name == "override":
                changes[name] = frozenset(value)
            elif isinstance(value, str):
                changes[name] = value or None
            else:
                changes[name] = value
        policy = replace(policy, security=SecurityHeaders(global_security.config.merged(**changes)))
    rate_limit = getattr(override, "rate_limit", None)
    if rate_limit is not None:
        r = rate_limit
        quota = Quota(rps=r.rps, burst=r.burst or max(1, round(r.rps * 2)), name=host)
        policy = replace(policy, quota=quota, limit_key="|" + host)
    return policy


@dataclass(frozen=True, slots=True)
class EdgeRoutes:
    hosts: frozenset[str]
    domains: dict[str, DomainPolicy]
    prefixes: dict[str, tuple[tuple[str, DomainPolicy], ...]]
    verified: frozenset[str] = frozenset()  # hosts whose owner proved control (ACME allowed)


def policies_for(
    table: RouteTable,
    *,
    default: DomainPolicy,
    static: dict[str, DomainPolicy],
    pool_for: Callable[[Route], Pool | None] | None = None,
) -> EdgeRoutes:
    """Per-route overrides on top of ``static`` (the configured per-domain policies), with
    each route's limits as the pool ``pool_for`` gives it (a path-prefix route never takes
    its domain's: at the balancers it is a route of its own)."""
    domains = dict(static)
    prefixes: dict[str, list[tuple[str, DomainPolicy]]] = {}
    hosts: set[str] = set()
    verified: set[str] = set()
    # the "/" routes first: a path-prefix route builds on its domain's policy
    for route in sorted(table.routes, key=lambda r: r.path_prefix != "/"):
        host = route.host.lower()
        hosts.add(host)
        if route.verified:
            verified.add(host)
        whole = route.path_prefix == "/"
        pool = pool_for(route) if pool_for is not None else None
        if route.policy is not None and whole:
            base = domains.get(host, default)
            try:
                domains[host] = override_policy(
                    host, route.policy, base=base, global_security=default.security
                )
            except ValueError as exc:  # the operator checks policies; never trust it blindly
                log.warning("routes.bad_policy", host=host, error=str(exc))
        if whole and pool is not None:
            domains[host] = replace(domains.get(host, default), pool=pool)
        quota: Quota | None = None
        name = host if whole else f"{host}{route.path_prefix}"
        if route.rate_limit_rps is not None:
            rps = route.rate_limit_rps
            try:
                burst = route.rate_limit_burst or max(1, round(rps * 2))
                quota = Quota(rps=rps, burst=burst, name=name)
            except (ValueError, OverflowError) as exc:
                log.warning("routes.bad_rate_limit", host=host, error=str(exc))
        base = domains.get(host, default)  # keeps the domain's own CORS / headers
        if whole:
            if quota is not None:
                domains[host] = replace(base, quota=quota, limit_key="|" + name)
            continue
        if quota is None and pool is None and base.pool is None:
            continue  # the domain's policy is the prefix's
        policy = replace(base, pool=pool)
        if quota is not None:
            policy = replace(policy, quota=quota, limit_key="|" + name)
        prefixes.setdefault(host, []).append((route.path_prefix, policy))
    ordered = {
        host: tuple(sorted(items, key=lambda item: len(item[0]), reverse=True))
        for host, items in prefixes.items()
    }
    return EdgeRoutes(frozenset(hosts), domains, ordered, frozenset(verified))


class RouteWatch:
    """Keeps the edge's policy and domain list in step with the operator's route table.

    A table that fails to apply (a bug) does not end the watch: it is logged and retried,
    backing off, while the edge serves on with the policy it has."""

    def __init__(
        self,
        *,
        source: RouteSource,
        policy: EdgePolicy,
        static: dict[str, DomainPolicy],
        on_hosts: Callable[[frozenset[str]], None],
        on_verified: Callable[[frozenset[str]], None] | None = None,
        wait: float = 30.0,
        full_refresh: float = 60.0,
        retry_max: float = 30.0,
    ) -> None:
        self._source = source
        self._policy = policy
        self._static = dict(static)
        self._on_hosts = on_hosts
        self._on_verified = on_verified
        self.limit_pools = RouteLimitPools(lambda: policy.pool)
        self._poll = VersionedPoll(
            fetch=self._fetch,
            apply=lambda table, full: self.apply(table),
            log=log,
            failed_event="routes.fetch_failed",
            wait=wait,
            full_refresh=full_refresh,
            retry_max=retry_max,
            apply_errors=(Exception,),
        )

    @property
    def version(self) -> int | None:
        return self._poll.version

    @property
    def last_error(self) -> str | None:
        return self._poll.last_error

    async def _fetch(self, version: int | None, wait: float) -> RouteTable:
        return await self._source.fetch(version=version, wait=wait)

    def apply(self, table: RouteTable) -> None:
        pools = self.limit_pools
        pools.begin()
        routes = policies_for(
            table, default=self._policy.default, static=self._static, pool_for=pools.pool_for
        )
        pools.end()
        self._policy.domains = routes.domains
        self._policy.prefixes = routes.prefixes
        self._policy.known_hosts |= routes.hosts
        if self._on_verified is not None:
            self._on_verified(routes.verified)  # before on_hosts: it wakes the certificates
        self._on_hosts(routes.hosts)
        log.info(
            "routes.applied",
            version=table.version,
            hosts=len(routes.hosts),
            limit_pools=len(pools),
        )

    async def run(self) -> None:
        await self._poll.run()
