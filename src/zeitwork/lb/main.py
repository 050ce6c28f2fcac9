"""Composition root of the load balancer: settings -> router, engine, loops, workers.

``run(settings)`` serves in this process when ``LB_WORKERS=1``; otherwise it forks that many
worker processes, each with its own SO_REUSEPORT listening socket, its own health checks and
route watch. Worker 0 also serves the admin listener and merges the other workers' counters
(they publish a snapshot file every second). SIGTERM: stop accepting, drain in-flight
requests up to ``LB_DRAIN_TIMEOUT``, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from zeitwork.clients.proxy_stats import ProxyStatsClient
from zeitwork.clients.routes import RoutesClient
from zeitwork.core.process import die_with_parent
from zeitwork.lb import route_stats
from zeitwork.lb.admin import AdminPolicy, NoRoutes
from zeitwork.lb.checks import default_check, static_check
from zeitwork.lb.metrics import LBMetrics, Snapshot
from zeitwork.lb.route_sync import RouteSync
from zeitwork.lb.router import BackendRegistry, RouteTableRouter
from zeitwork.lb.settings import LBSettings
from zeitwork.lb.stats_push import StatsPusher
from zeitwork.observability import configure_logging, get_logger, new_registry
from zeitwork.proxy import (
    Backend,
    EjectionPolicy,
    Proxy,
    ProxyConfig,
    TrustedProxies,
    core_compiled,
    parse_networks,
    reuse_port_socket,
)
from zeitwork.proxy.checker import HealthChecker

PUBLISH_INTERVAL = 1.0


def _config(settings: LBSettings) -> ProxyConfig:
    return ProxyConfig(
        connect_timeout=settings.connect_timeout,
        header_timeout=settings.header_timeout,
        idle_timeout=settings.idle_timeout,
        first_byte_timeout=settings.first_byte_timeout,
        stream_idle_timeout=settings.stream_idle_timeout,
        tunnel_idle_timeout=settings.tunnel_idle_timeout,
        max_body=settings.max_body,
    )


class _Peers:
    """Reads the snapshots other workers publish (worker 0's view of the whole balancer)."""

    def __init__(self, directory: Path | None, own: int) -> None:
        self.directory = directory
        self.own = own

    def read(self) -> list[dict[str, Any]]:
        if self.directory is None:
            return []
        out: list[dict[str, Any]] = []
        for path in sorted(self.directory.glob("worker-*.json")):
            if path.name == f"worker-{self.own}.json":
                continue
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(path.read_text()))
        return out

    def metrics(self) -> list[Snapshot]:
        return [p["metrics"] for p in self.read() if "metrics" in p]


async def _publish(
    directory: Path, index: int, metrics: LBMetrics, registry: BackendRegistry
) -> None:
    path = directory / f"worker-{index}.json"
    tmp = directory / f".worker-{index}.tmp"
    while True:
        await asyncio.sleep(PUBLISH_INTERVAL)
        data = {
            "metrics": metrics.snapshot(),
            "backends": {
                b.address: {
                    "in_flight": b.in_flight,
                    "requests": b.requests,
                    "failures": b.failures,
                }
                for b in registry.all()
            },
        }
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)


class LoadBalancer:
    """One worker's balancer: built without I/O, then ``start`` binds, ``run`` serves."""

    def __init__(
        self, settings: LBSettings, *, index: int = 0, stats_dir: Path | None = None
    ) -> None:
        self.settings = settings
        self.index = index
        self.stats_dir = stats_dir
        self.log = get_logger("zeitwork.lb").bind(worker=index)
        self.prom = new_registry()
        self.peers = _Peers(stats_dir, index)
        own_check = default_check(
            interval=settings.health_interval,
            timeout=settings.health_timeout,
            rise=settings.health_rise,
            fall=settings.health_fall,
        )
        self.backends = BackendRegistry(
            rise=settings.health_rise,
            fall=settings.health_fall,
            check=own_check,
            ejection=EjectionPolicy(
                consecutive_failures=settings.eject_failures,
                base_seconds=settings.eject_seconds,
                max_seconds=settings.eject_max_seconds,
            ),
            listener=self._on_health,
        )
        self.backends.on_drain = self._on_drain
        self.router = RouteTableRouter(
            registry=self.backends,
            algorithm=settings.algorithm,
            static_backends=settings.backend_list,
            static_check=static_check(own_check, path=settings.health_path),
        )
        self.metrics = LBMetrics(
            registry=self.prom,
            peers=self.peers.metrics if stats_dir is not None and index == 0 else None,
        )
        self.proxy = Proxy(
            router=self.router,
            config=_config(settings),
            observer=self.metrics,
            trusted=TrustedProxies(parse_networks(settings.trusted_proxies)),
        )
        self.client: RoutesClient | None = None
        self.sync: RouteSync | None = None
        if settings.operator_url and settings.token:
            self.client = RoutesClient(
                base_url=settings.operator_url, token=settings.token.get_secret_value()
            )
            self.sync = RouteSync(
                source=self.client,
                router=self.router,
                cache=settings.route_cache,
                log=self.log,
                wait=settings.watch_wait,
                full_refresh=settings.full_refresh,
            )
        self.stats_client: ProxyStatsClient | None = None
        self.pusher: StatsPusher | None = None
        if settings.operator_url and settings.token and index == 0 and settings.stats_push_interval:
            self.stats_client = ProxyStatsClient(
                base_url=settings.operator_url, token=settings.token.get_secret_value()
            )
            self.pusher = StatsPusher(
                sink=self.stats_client,
                snapshot=self.stats_routes,
                interval=settings.stats_push_interval,
                log=self.log,
                lb_id=settings.lb_id,
                id_file=settings.id_file,
            )
        self.checker = HealthChecker(backends=self.backends.all)
        self.admin: Proxy | None = None
        self.port = 0
        self.admin_port = 0
        self.started = time.time()

    def stats_routes(self) -> dict[str, Any]:
        """``GET /stats/routes``: per route (domain host), totals since start, all workers."""
        return {
            "started_at": round(self.started, 3),
            "at": round(time.time(), 3),
            "workers": self.settings.workers,
            "latency_bounds": list(route_stats.BOUNDS),
            "routes": route_stats.as_json(self.metrics.route_totals()),
        }

    def _on_health(self, backend: Backend, kind: str, available: bool) -> None:
        self.metrics.health_changed(backend, kind, available)
        self.log.info(
            "backend.health_changed", backend=backend.address, kind=kind, available=available
        )

    def _on_drain(self, backend: Backend) -> None:
        self.log.info("backend.draining", backend=backend.address, in_flight=backend.in_flight)

    def state(self) -> dict[str, Any]:
        all_backends = self.backends.all()
        available = sum(1 for b in all_backends if b.available)
        return {
            "status": "ok" if available or not all_backends else "degraded",
            "workers": self.settings.workers,
            "routes_version": self.router.version,
            "routes": len(self.router.pools()) - 1,
            "operator_error": self.sync.last_error if self.sync is not None else None,
            "backends": {"total": len(all_backends), "available": available},
            "open_connections": len(self.proxy.connections),
            "uptime_seconds": round(time.time() - self.started, 1),
        }

    def backend_rows(self) -> list[dict[str, Any]]:
        rows = [b.snapshot() for b in self.backends.all()]
        others = self.peers.read() if self.stats_dir is not None and self.index == 0 else []
        pools = self.router.pools()
        for row in rows:
            address = row["address"]
            for other in others:
                extra = other.get("backends", {}).get(address)
                if extra:
                    for key in ("in_flight", "requests", "failures"):
                        row[key] = int(str(row[key])) + int(extra[key])
            row["pools"] = [p.name for p in pools if any(x.address == address for x in p.backends)]
        return rows

    async def start(self, *, port: int | None = None, admin_port: int | None = None) -> None:
        settings = self.settings
        if self.sync is not None:
            self.sync.load_cache()
        if self.pusher is not None:
            self.pusher.load_id()
        sock = reuse_port_socket(settings.host, settings.port if port is None else port)
        await self.proxy.serve(sock)
        self.port = sock.getsockname()[1]
        if self.index == 0:
            self.admin = Proxy(
                router=NoRoutes(),
                policy=AdminPolicy(
                    state=self.state,
                    backends=self.backend_rows,
                    routes=self.stats_routes,
                    registry=self.prom,
                ),
                config=ProxyConfig(idle_timeout=10.0, header_timeout=5.0),
            )
            admin_sock = reuse_port_socket(
                settings.admin_host, settings.admin_port if admin_port is None else admin_port
            )
            await self.admin.serve(admin_sock)
            self.admin_port = admin_sock.getsockname()[1]
            self.log.info("proxy.core", compiled=core_compiled())
            self.log.info(
                "lb.listening",
                port=self.port,
                admin_port=self.admin_port,
                workers=settings.workers,
                algorithm=settings.algorithm,
                static_backends=len(settings.backend_list),
                operator=settings.operator_url,
            )

    async def run(self, stop: asyncio.Event) -> None:
        """Run the background loops until ``stop`` is set, then drain and close."""
        settings = self.settings
        try:
            async with asyncio.TaskGroup() as tasks:
                loops = [tasks.create_task(self.checker.run(), name="health-checker")]
                if self.sync is not None:
                    loops.append(tasks.create_task(self.sync.run(), name="route-sync"))
                if self.pusher is not None:
                    loops.append(tasks.create_task(self.pusher.run(), name="stats-push"))
                if self.stats_dir is not None and self.index > 0:
                    loops.append(
                        tasks.create_task(
                            _publish(self.stats_dir, self.index, self.metrics, self.backends),
                            name="stats",
                        )
                    )
                await stop.wait()
                self.log.info(
                    "lb.draining", in_flight=self.proxy.in_flight, grace=settings.drain_timeout
                )
                cut = await self.proxy.drain(settings.drain_timeout)
                if self.admin is not None:
                    await self.admin.drain(0.5)
                for task in loops:
                    task.cancel()
                self.log.info("lb.stopped", cut=cut)
        finally:
            for backend in self.backends.all():
                backend.close_idle()
            if self.client is not None:
                await self.client.aclose()
            if self.stats_client is not None:
                await self.stats_client.aclose()


async def serve(
    settings: LBSettings,
    *,
    index: int = 0,
    port: int | None = None,
    admin_port: int | None = None,
    stats_dir: Path | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT, then drain."""
    lb = LoadBalancer(settings, index=index, stats_dir=stats_dir)
    await lb.start(port=port, admin_port=admin_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # SIGHUP is not fatal: routes follow the operator already, settings need a restart
    loop.add_signal_handler(signal.SIGHUP, lambda: lb.log.info("lb.reloaded", routes="live"))
    await lb.run(stop)


def _worker_main(
    settings: LBSettings, index: int, port: int, admin_port: int, stats_dir: Path
) -> None:
    code = 0
    try:
        uvloop.run(
            serve(settings, index=index, port=port, admin_port=admin_port, stats_dir=stats_dir)
        )
    except BaseException:
        get_logger("zeitwork.lb").exception("lb.worker_crashed", worker=index)
        code = 1
    os._exit(code)


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (without listening) so that port 0 becomes one concrete port all workers share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _supervise(settings: LBSettings) -> int:
    log = get_logger("zeitwork.lb")
    stats_dir = Path(tempfile.mkdtemp(prefix="zeitwork-lb-"))
    data_res = _reserve(settings.host, settings.port)
    admin_res = _reserve(settings.admin_host, settings.admin_port)
    port = data_res.getsockname()[1]
    admin_port = admin_res.getsockname()[1]
    children: dict[int, int] = {}
    stopping = False
    supervisor = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until serve() handles it
            die_with_parent(parent=supervisor)  # a supervisor killed outright takes its workers
            data_res.close()
            admin_res.close()
            _worker_main(settings, index, port, admin_port, stats_dir)
        children[pid] = index

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def hangup(signum: int, _frame: Any) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, hangup)
    for i in range(settings.workers):
        spawn(i)
    status = 0
    try:
        while children:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            index = children.pop(pid, None)
            if index is None:
                continue
            code = os.waitstatus_to_exitcode(wait_status)
            if not stopping:
                log.error("lb.worker_exited", worker=index, code=code)
                time.sleep(0.5)
                spawn(index)
            elif code != 0:
                status = 1
    finally:
        data_res.close()
        admin_res.close()
        shutil.rmtree(stats_dir, ignore_errors=True)
    return status


def run(settings: LBSettings) -> int:
    configure_logging(
        service="load-balancer",
        environment=settings.environment.value,
        level=settings.log_level.value,
    )
    try:
        if settings.workers == 1:
            uvloop.run(serve(settings))
            return 0
        return _supervise(settings)
    except OSError as exc:  # cannot bind a listener: one line, not a traceback
        print(f"zeitwork: load balancer cannot start: {exc}", file=sys.stderr)
        return 1
