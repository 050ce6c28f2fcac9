"""Backends (one per ``host:port``, shared by every pool naming it) and pools.

A ``Backend`` keeps its idle keep-alive upstream connections, its in-flight count, counters,
and its health (active thresholds + passive ejection). A ``Pool`` is a named set of backends
with a balancer; it re-computes its eligible candidates only when membership or health
changes, so ``pick`` costs what the algorithm costs and nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from mypy_extensions import mypyc_attr

from zeitwork.proxy.balancing import AlgorithmName, Balancer, Candidate, make_balancer
from zeitwork.proxy.health import ActiveHealth, CheckSpec, EjectionPolicy, OutlierDetector


class IdleConnection(Protocol):
    """A keep-alive upstream connection in a backend's idle list (``upstream.UpstreamProtocol``:
    the backend side imports this module, not the other way round)."""

    @property
    def reusable(self) -> bool: ...

    def close(self) -> None: ...


HealthListener = Callable[["Backend", str, bool], None]
"""Called with (backend, kind "active"|"passive", now_available) on every transition."""


def parse_address(address: str) -> tuple[str, int]:
    """``"10.0.0.5:8080"`` / ``"[::1]:80"`` -> (host, port); raises ValueError."""
    text = address.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"bad backend address {address!r}: expected [v6]:port")
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad backend address {address!r}: expected host:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad backend address {address!r}: port must be 1-65535")
    return host, int(port_text)


@mypyc_attr(allow_interpreted_subclasses=True)
class Backend:
    __slots__ = (
        "_listener",
        "_pools",
        "active",
        "address",
        "check",
        "draining",
        "failures",
        "host",
        "idle",
        "in_flight",
        "last_check",
        "last_check_detail",
        "last_check_ok",
        "max_idle",
        "next_check",
        "outlier",
        "port",
        "protocol",
        "requests",
        "upstream_connections",
        "weight",
    )

    def __init__(
        self,
        address: str,
        *,
        weight: int = 1,
        rise: int = 2,
        fall: int = 2,
        ejection: EjectionPolicy | None = None,
        max_idle: int = 256,
        listener: HealthListener | None = None,
        check: CheckSpec | None = None,
    ) -> None:
        self.address = address
        self.host, self.port = parse_address(address)
        self.weight = weight
        # available at once: whoever names a backend vouches for it (the operator lists only
        # instances its agents found healthy); the active checks below can take it out
        self.check = check if check is not None else CheckSpec(rise=rise, fall=fall)
        self.active = ActiveHealth(rise=self.check.rise, fall=self.check.fall, healthy=True)
        self.next_check = 0.0  # monotonic time of the next active check (0: at once)
        self.outlier = OutlierDetector(ejection)
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.last_check: float | None = None
        self.last_check_ok: bool | None = None
        self.last_check_detail = ""
        self.draining = False
        # "http1" (keep-alive connections in ``idle``) or "h2c" (streams on shared HTTP/2
        # connections, ``proxy.h2_upstream``): what its release was deployed with
        self.protocol = "http1"
        self.max_idle = max_idle
        self.idle: list[IdleConnection] = []
        self.upstream_connections = 0
        self._pools: list[Pool] = []
        self._listener = listener

    # -- Candidate protocol -------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.address

    # -- availability ---------------------------------------------------------------------
    @property
    def ejected(self) -> bool:
        return self.outlier.is_ejected(time.monotonic())

    @property
    def available(self) -> bool:
        return self.active.healthy and not self.draining and not self.ejected

    def _changed(self, kind: str) -> None:
        for pool in self._pools:
            pool.refresh()
        if self._listener is not None:
            self._listener(self, kind, self.available)

    def set_check(self, check: CheckSpec) -> None:
        """Switch to another active check; thresholds change, the current state carries over
        (a check switched off makes the backend healthy as far as active checks go)."""
        if check == self.check:
            return
        self.check = check
        self.active.configure(rise=check.rise, fall=check.fall)
        self.next_check = 0.0
        if check.kind == "none" and self.active.reset():
            self._changed("active")

    def record_check(self, ok: bool, detail: str = "") -> None:
        self.last_check = time.time()
        self.last_check_ok = ok
        self.last_check_detail = detail
        if self.active.record(ok):
            self._changed("active")

    def record_success(self) -> None:
        self.outlier.record_success()

    def record_failure(self) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.outlier.record_failure(now):
            self._changed("passive")
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # pragma: no cover - engine always runs in a loop
                return
            loop.call_at(
                loop.time() + (self.outlier.ejected_until - now) + 0.001,
                self._readmit,
            )

    def _readmit(self) -> None:
        self._changed("passive")

    # -- pool membership ------------------------------------------------------------------
    def attach(self, pool: Pool) -> None:
        if pool not in self._pools:
            self._pools.append(pool)

    def detach(self, pool: Pool) -> None:
        if pool in self._pools:
            self._pools.remove(pool)

    @property
    def referenced(self) -> bool:
        return bool(self._pools)

    # -- idle upstream connections --------------------------------------------------------
    def take_idle(self) -> IdleConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.reusable:
                return conn
        return None

    def put_idle(self, conn: IdleConnection) -> None:
        if self.draining or len(self.idle) >= self.max_idle:
            conn.close()
            return
        self.idle.append(conn)

    def forget_idle(self, conn: IdleConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

    def drain(self) -> None:
        """Leave rotation: no new requests, idle connections closed, in-flight ones finish."""
        self.draining = True
        self.close_idle()

    def snapshot(self) -> dict[str, object]:
        return {
            "address": self.address,
            "healthy": self.active.healthy,
            "ejected": self.ejected,
            "available": self.available,
            "draining": self.draining,
            "weight": self.weight,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "idle_connections": len(self.idle),
            "check": self.check.kind,
            "last_check": self.last_check,
            "last_check_ok": self.last_check_ok,
            "last_check_detail": self.last_check_detail,
        }


@mypyc_attr(allow_interpreted_subclasses=True)
class Pool:
    """A named group of backends with one balancing algorithm, and its route's limits: the
    response and tunnel idle timeouts (0: the engine's ``ProxyConfig`` ones) and how many
    upgraded connections it may hold open at once (``max_tunnels``, 0: any number; counted
    in ``tunnels`` within this process, a reserved place included)."""

    __slots__ = (
        "_balancer",
        "algorithm",
        "backends",
        "max_tunnels",
        "name",
        "response_idle_timeout",
        "tunnel_idle_timeout",
        "tunnels",
    )

    def __init__(
        self,
        name: str,
        *,
        algorithm: AlgorithmName = "round-robin",
        backends: Iterable[Backend] = (),
    ) -> None:
        self.name = name
        self.algorithm: AlgorithmName = algorithm
        self._balancer: Balancer[Candidate] = make_balancer(algorithm)
        self.backends: list[Backend] = []
        self.response_idle_timeout = 0.0
        self.tunnel_idle_timeout = 0.0
        self.max_tunnels = 0
        self.tunnels = 0
        self.set_backends(backends)

    def set_backends(self, backends: Iterable[Backend]) -> None:
        new = list(backends)
        for old in self.backends:
            if old not in new:
                old.detach(self)
        for b in new:
            b.attach(self)
        self.backends = new
        self.refresh()

    def set_algorithm(self, algorithm: AlgorithmName) -> None:
        if algorithm != self.algorithm:
            self.algorithm = algorithm
            self._balancer = make_balancer(algorithm)
            self.refresh()

    def refresh(self) -> None:
        self._balancer.update([b for b in self.backends if b.available])

    def pick(self, client_ip: str, exclude: Backend | None = None) -> Backend | None:
        chosen = self._balancer.pick(client_ip, exclude)
        return chosen if isinstance(chosen, Backend) else None

    def take_tunnel(self) -> bool:
        """A place for one more upgraded connection; False when ``max_tunnels`` are open."""
        if self.max_tunnels and self.tunnels >= self.max_tunnels:
            return False
        self.tunnels += 1
        return True

    def give_tunnel(self) -> None:
        """An upgraded connection (or an upgrade the backend refused) gave its place back."""
        if self.tunnels > 0:
            self.tunnels -= 1

    def close(self) -> None:
        for b in self.backends:
            b.detach(self)
        self.backends = []
        self.refresh()
