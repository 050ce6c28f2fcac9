"""Routing of requests to pools, from the operator's route table (plus a static default pool).

``resolve`` is a dict lookup by host (then a short scan of path prefixes when a host has
more than one route). ``apply`` diffs the new table against the previous one: only routes
whose content changed are touched, backends are shared by address across routes (one set
of health checks per address, by the route's own check: ``lb/checks.py``), and a backend
that no route names any more is drained: no new requests, its in-flight ones finish, its
idle upstream connections are closed. A backend the table names is available at once. A
route's limits (its release's response and tunnel idle timeouts, its tunnel count) become
its pool's, which the engine reads for each exchange and tunnel of the route.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from zeitwork.lb.checks import assign as assign_checks
from zeitwork.proxy.backends import Backend, HealthListener, Pool, parse_address
from zeitwork.proxy.balancing import AlgorithmName
from zeitwork.proxy.health import CheckSpec, EjectionPolicy
from zeitwork.proxy.routing import prefix_matches
from zeitwork.wire.routes import Route, RouteBackend, RouteTable

DEFAULT_POOL = "default"
NO_POOL = "-"  # what the engine reports for requests refused before routing


def pool_name(host: str, prefix: str) -> str:
    """A route's pool name: its host, then its path prefix unless that is ``/``."""
    return host if prefix == "/" else f"{host}{prefix}"


def route_of_pool(name: str) -> str | None:
    """The route host a pool name stands for; None for the default pool and no pool."""
    if name in (DEFAULT_POOL, NO_POOL):
        return None
    return name.split("/", 1)[0]


log = structlog.get_logger("zeitwork.lb.router")


def _usable(backends: Iterable[RouteBackend]) -> list[RouteBackend]:
    """The backends whose address parses; one bad entry in the table is skipped and logged,
    never allowed to fail the whole update (and with it the worker)."""
    usable: list[RouteBackend] = []
    for backend in backends:
        try:
            parse_address(backend.address)
        except ValueError as exc:
            log.warning("routes.backend_skipped", address=backend.address, error=str(exc))
            continue
        usable.append(backend)
    return usable


class BackendRegistry:
    """One ``Backend`` per address, created on first use and drained when unreferenced."""

    def __init__(
        self,
        *,
        rise: int = 2,
        fall: int = 2,
        ejection: EjectionPolicy | None = None,
        listener: HealthListener | None = None,
        check: CheckSpec | None = None,
    ) -> None:
        self._rise = rise
        self._fall = fall
        self.default_check = check if check is not None else CheckSpec(rise=rise, fall=fall)
        self._ejection = ejection
        self._listener = listener
        self.backends: dict[str, Backend] = {}
        self.on_drain: Callable[[Backend], None] | None = None

    def get(
        self,
        address: str,
        weight: int = 1,
        check: CheckSpec | None = None,
        protocol: str = "http1",
    ) -> Backend:
        backend = self.backends.get(address)
        if backend is None:
            backend = Backend(
                address,
                weight=weight,
                rise=self._rise,
                fall=self._fall,
                ejection=self._ejection,
                listener=self._listener,
                check=check or self.default_check,
            )
            self.backends[address] = backend
        elif backend.weight != weight:
            backend.weight = weight
        backend.protocol = protocol  # new connections use it (open ones finish as they are)
        return backend

    def collect(self) -> list[Backend]:
        """Drain and forget backends that no pool references; return them."""
        gone = [b for b in self.backends.values() if not b.referenced]
        for backend in gone:
            del self.backends[backend.address]
            backend.drain()
            if self.on_drain is not None:
                self.on_drain(backend)
        return gone

    def all(self) -> list[Backend]:
        return list(self.backends.values())


@dataclass(frozen=True, slots=True)
class ApplyResult:
    version: int
    added: int
    changed: int
    removed: int
    drained: int


class RouteTableRouter:
    """The load balancer's ``Router``."""

    def __init__(
        self,
        *,
        registry: BackendRegistry,
        algorithm: AlgorithmName = "round-robin",
        static_backends: Iterable[str] = (),
        static_check: CheckSpec | None = None,
    ) -> None:
        self.registry = registry
        self.algorithm: AlgorithmName = algorithm
        self.version: int | None = None
        self._routes: dict[tuple[str, str], Route] = {}
        self._pools: dict[tuple[str, str], Pool] = {}
        self._by_host: dict[str, dict[str, Pool]] = {}
        # host -> Pool (single "/" route) or list of (prefix, pool), longest prefix first
        self._hosts: dict[str, Pool | list[tuple[str, Pool]]] = {}
        self._wild: dict[str, Pool | list[tuple[str, Pool]]] = {}
        self._static = [s for s in static_backends]
        self._static_check = static_check or registry.default_check
        self.default = Pool(DEFAULT_POOL, algorithm=algorithm)
        self._default_wire: list[RouteBackend] | None = None
        if self._static:
            self.default.set_backends(
                registry.get(a, check=self._static_check) for a in self._static
            )

    # -- Router ----------------------------------------------------------------------------------
    def resolve(self, host: str, path: str) -> Pool | None:
        entry = self._hosts.get(host)
        if entry is None and self._wild:
            dot = host.find(".")
            if dot > 0:
                entry = self._wild.get(host[dot:])
        if entry is None:
            return self.default
        if isinstance(entry, Pool):
            return entry
        for prefix, pool in entry:
            if prefix_matches(path, prefix):
                return pool
        return self.default

    # -- updates ---------------------------------------------------------------------------------
    def pools(self) -> list[Pool]:
        return [self.default, *self._pools.values()]

    def apply(self, table: RouteTable) -> ApplyResult:
        added = changed = removed = 0
        incoming: dict[tuple[str, str], Route] = {}
        for route in table.routes:
            incoming[(route.host.lower().rstrip("."), route.path_prefix or "/")] = route
        hosts_touched: set[str] = set()
        for key, route in incoming.items():
            old = self._routes.get(key)
            if old is not None and old == route:
                continue
            pool = self._pools.get(key)
            algorithm = route.algorithm or self.algorithm
            if pool is None:
                pool = Pool(pool_name(key[0], key[1]), algorithm=algorithm)
                self._pools[key] = pool
                self._by_host.setdefault(key[0], {})[key[1]] = pool
                added += 1
                hosts_touched.add(key[0])
            else:
                pool.set_algorithm(algorithm)
                changed += 1
            pool.set_backends(
                self.registry.get(b.address, b.weight, protocol=b.protocol)
                for b in _usable(route.backends)
            )
            # the current release's per-route limits (0: the engine's own, no tunnel limit)
            pool.response_idle_timeout = route.response_idle_timeout or 0.0
            pool.tunnel_idle_timeout = route.tunnel_idle_timeout or 0.0
            pool.max_tunnels = route.max_tunnels or 0
            self._routes[key] = route
        for key in [k for k in self._routes if k not in incoming]:
            del self._routes[key]
            self._pools.pop(key).close()
            prefixes = self._by_host.get(key[0], {})
            prefixes.pop(key[1], None)
            if not prefixes:
                self._by_host.pop(key[0], None)
            removed += 1
            hosts_touched.add(key[0])
        for host in hosts_touched:
            self._index_host(host)
        if not self._static and table.default_backends != self._default_wire:
            self._default_wire = list(table.default_backends)
            self.default.set_backends(
                self.registry.get(b.address, b.weight, protocol=b.protocol)
                for b in _usable(table.default_backends)
            )
        drained = self.registry.collect()
        self._assign_checks(table)
        self.version = table.version
        return ApplyResult(table.version, added, changed, removed, len(drained))

    def _assign_checks(self, table: RouteTable) -> None:
        assigned = assign_checks(table)
        static = set(self._static)
        for address, backend in self.registry.backends.items():
            fallback = self._static_check if address in static else self.registry.default_check
            backend.set_check(assigned.get(address, fallback))

    def _index_host(self, host: str) -> None:
        entries = sorted(
            self._by_host.get(host, {}).items(),
            key=lambda item: len(item[0]),
            reverse=True,
        )
        target = self._wild if host.startswith("*.") else self._hosts
        name = host[1:] if host.startswith("*.") else host
        if not entries:
            target.pop(name, None)
        elif len(entries) == 1 and entries[0][0] == "/":
            target[name] = entries[0][1]
        else:
            target[name] = entries
