"""Composition root of the load balancer: settings -> router, engine, loops, workers.

``run(settings)`` serves in this process when ``LB_WORKERS=1``; otherwise it forks that many
worker processes. The supervisor makes every worker's SO_REUSEPORT listening socket before
forking (in worker order) and holds its copies until they have exited; each worker has its
own health checks and route watch. Worker 0 also serves the admin listener and merges the
other workers' counters (they publish a snapshot file every second). With the operator and
no cached table, a starting worker accepts only once it has the route table
(``LB_ROUTES_WAIT`` at most); connections wait in its queue meanwhile.

SIGTERM hands the port to a successor listening on it (``serving/handoff.py``: up to
``LB_HANDOFF_TIMEOUT`` s), then drains in-flight requests up to ``LB_DRAIN_TIMEOUT`` and
exits. Sockets passed by systemd (``LISTEN_FDS``: the data listener, then optionally the
admin one) are used instead of binding; systemd keeps them open across a restart, so there
is nothing to hand off. SIGHUP reloads what can change without a restart: the whole route
table is fetched from the operator at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import uvloop

from zeitwork.clients.proxy_stats import ProxyStatsClient
from zeitwork.clients.routes import RoutesClient
from zeitwork.core.errors import ZeitworkError
from zeitwork.core.files import atomic_write
from zeitwork.lb import route_stats
from zeitwork.lb.admin import AdminPolicy
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
from zeitwork.serving.activation import listen_sockets
from zeitwork.serving.admin import serve_admin
from zeitwork.serving.handoff import close_generation, hand_off, settle, socket_inode
from zeitwork.serving.handoff import wait_predecessor_gone as predecessor_gone
from zeitwork.serving.prefork import WorkerPool
from zeitwork.serving.steering import detach

PUBLISH_INTERVAL = 1.0


def _config(settings: LBSettings) -> ProxyConfig:
    return ProxyConfig(
        connect_timeout=settings.connect_timeout,
        header_timeout=settings.header_timeout,
        idle_timeout=settings.idle_timeout,
        first_byte_timeout=settings.first_byte_timeout,
        stream_idle_timeout=settings.stream_idle_timeout,
        tunnel_idle_timeout=settings.tunnel_idle_timeout,
        tunnel_drain_timeout=settings.tunnel_drain_timeout,
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
            atomic_write(path, json.dumps(data).encode(), durable=False)


class LoadBalancer:
    """One worker's balancer: built without I/O, then ``start`` binds, ``run`` serves."""

    def __init__(
        self,
        settings: LBSettings,
        *,
        index: int = 0,
        stats_dir: Path | None = None,
        listen_sock: socket.socket | None = None,
        admin_sock: socket.socket | None = None,
        generation: frozenset[int] = frozenset(),
        activated: bool = False,
    ) -> None:
        """``listen_sock``: the data listener the supervisor (or systemd: ``activated``)
        made, else one is made here; ``generation``: the inodes of every data listener of
        this balancer's workers (a handoff's successor is a listener not among them)."""
        self.settings = settings
        self.index = index
        self.stats_dir = stats_dir
        self.listen_sock = listen_sock
        self.admin_sock = admin_sock
        self.generation = generation
        self.activated = activated
        self.log = get_logger("zeitwork.lb").bind(worker=index)
        self.prom = new_registry()
        self.peers = _Peers(stats_dir, index)
        self.backends = self._backend_registry()
        self.router = RouteTableRouter(
            registry=self.backends,
            algorithm=settings.algorithm,
            static_backends=settings.backend_list,
            static_check=static_check(self.backends.default_check, path=settings.health_path),
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
        self.client, self.sync = self._route_sync()
        self.stats_client, self.pusher = self._stats_pusher()
        self.checker = HealthChecker(backends=self.backends.all)
        self.admin: Proxy | None = None
        self._listening: list[socket.socket] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._steering: asyncio.Task[None] | None = None
        self._reloads: set[asyncio.Task[None]] = set()
        self.port = 0
        self.admin_port = 0
        self.started = time.time()

    # -- parts (no I/O) -------------------------------------------------------------------

    def _backend_registry(self) -> BackendRegistry:
        """Every backend's health (active checks with rise/fall, passive ejection)."""
        settings = self.settings
        registry = BackendRegistry(
            rise=settings.health_rise,
            fall=settings.health_fall,
            check=default_check(
                interval=settings.health_interval,
                timeout=settings.health_timeout,
                rise=settings.health_rise,
                fall=settings.health_fall,
            ),
            ejection=EjectionPolicy(
                consecutive_failures=settings.eject_failures,
                base_seconds=settings.eject_seconds,
                max_seconds=settings.eject_max_seconds,
            ),
            listener=self._on_health,
        )
        registry.on_drain = self._on_drain
        return registry

    def _route_sync(self) -> tuple[RoutesClient | None, RouteSync | None]:
        """The operator's route table, watched and cached on disk (when an operator is set)."""
        settings = self.settings
        if not (settings.operator_url and settings.token):
            return None, None
        client = RoutesClient(
            base_url=settings.operator_url, token=settings.token.get_secret_value()
        )
        sync = RouteSync(
            source=client,
            router=self.router,
            cache=settings.route_cache,
            log=self.log,
            wait=settings.watch_wait,
            full_refresh=settings.full_refresh,
        )
        return client, sync

    def _stats_pusher(self) -> tuple[ProxyStatsClient | None, StatsPusher | None]:
        """Worker 0's per-route totals pushed to the operator (when an operator is set)."""
        settings = self.settings
        if not (settings.operator_url and settings.token and self.index == 0):
            return None, None
        if not settings.stats_push_interval:
            return None, None
        client = ProxyStatsClient(
            base_url=settings.operator_url, token=settings.token.get_secret_value()
        )
        pusher = StatsPusher(
            sink=client,
            snapshot=self.stats_routes,
            interval=settings.stats_push_interval,
            log=self.log,
            lb_id=settings.lb_id,
            id_file=settings.id_file,
        )
        return client, pusher

    # -- views ----------------------------------------------------------------------------

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
        cached = self.sync.load_cache() if self.sync is not None else False
        if self.pusher is not None:
            self.pusher.load_id()
        if self.sync is not None:
            self._sync_task = asyncio.create_task(self.sync.run(), name="route-sync")
            if not cached:
                await self._first_table(settings.routes_wait)
        # SO_REUSEPORT with one worker too: a successor can listen beside this balancer
        # before it stops (serving/handoff.py)
        sock = self.listen_sock or reuse_port_socket(
            settings.host, settings.port if port is None else port
        )
        self._listening = [sock]
        if not self.activated:
            self.generation = self.generation | {socket_inode(sock)}
        await self.proxy.serve(sock)
        self.port = sock.getsockname()[1]
        if self.index == 0 and not self.activated:
            self._steering = asyncio.create_task(self._restore_spreading(), name="steering")
        if self.index == 0:
            await self._serve_admin(admin_port)

    async def _serve_admin(self, admin_port: int | None) -> None:
        """Worker 0's admin listener (``lb/admin.py``) on the proxy core (``serving/admin.py``)."""
        settings = self.settings
        admin_sock = self.admin_sock or reuse_port_socket(
            settings.admin_host, settings.admin_port if admin_port is None else admin_port
        )
        self.admin = await serve_admin(
            AdminPolicy(
                state=self.state,
                backends=self.backend_rows,
                routes=self.stats_routes,
                registry=self.prom,
            ),
            admin_sock,
        )
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
            activated=self.activated,
        )

    async def _first_table(self, wait: float) -> None:
        """Until the operator's first answer (a table, or an error), at most ``wait`` s: a
        worker that accepted before it had the table would answer its routes 404/503 while
        its siblings serve them (and count them under no route)."""
        assert self.sync is not None and self._sync_task is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self.sync.synced.is_set() and self.sync.last_error is None:
            if self._sync_task.done():
                self._sync_task.result()  # it crashed: so does the start
            if loop.time() >= deadline:
                self.log.warning("lb.routes_not_yet", waited=wait)
                return
            await asyncio.sleep(0.02)

    async def _restore_spreading(self) -> None:
        """Started beside a predecessor (a handoff), whose last program steers new
        connections by source address: once it has gone, the kernel's spreading over this
        balancer's workers again (by source, one edge's connections would meet one worker)."""
        try:
            if not await predecessor_gone(self._listening, own=self.generation):
                return
        except OSError:
            return  # the listener closed meanwhile (a stop right after the start)
        try:
            detach(self._listening[0])
        except OSError as exc:
            self.log.warning("lb.steering_unavailable", error=str(exc))
            return
        self.log.info("lb.steering_restored", workers=self.settings.workers)

    async def hand_off(self) -> bool:
        """SIGTERM: before the listener closes, wait up to ``LB_HANDOFF_TIMEOUT`` s for a
        successor listening on the same port and steer new connections to it, so that no
        connection is refused. True when one took over. Sockets from systemd stay open in
        systemd across the restart: nothing to hand off."""
        if self.activated or not self._listening:
            return False
        wait = self.settings.handoff_timeout
        outcome = await hand_off(
            self._listening, own=self.generation, wait=wait, shared=self.listen_sock is not None
        )
        if outcome.error is not None:
            self.log.warning("lb.handoff_failed", error=outcome.error)
        elif outcome.successor is None:
            self.log.info("lb.no_successor", waited=wait)
        else:
            self.log.info(
                "lb.handed_off", successor_sockets=outcome.successor, still_queued=outcome.queued
            )
        return outcome.successor is not None

    def reload(self) -> None:
        """SIGHUP: what can change without a restart. The route table is fetched whole from
        the operator at once (the watch would also see a change, within its long-poll);
        open connections are untouched. Settings come from the environment, read once:
        change them with a restart, which hands the port over (``hand_off``)."""
        if self.client is None or self.sync is None:
            self.log.info("lb.reloaded", routes="static", routes_version=self.router.version)
            return
        task = asyncio.create_task(self._refetch(self.client, self.sync), name="lb.reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _refetch(self, client: RoutesClient, sync: RouteSync) -> None:
        try:
            table = await client.fetch()
        except (ZeitworkError, OSError) as exc:
            self.log.warning("lb.reload_failed", error=f"{type(exc).__name__}: {exc}")
            return
        if table.version != self.router.version:
            sync.apply(table)
        self.log.info("lb.reloaded", routes="fetched", routes_version=self.router.version)

    async def run(self, stop: asyncio.Event) -> None:
        """Run the background loops in one TaskGroup until ``stop`` is set, then hand off,
        drain and close."""
        try:
            async with asyncio.TaskGroup() as tasks:
                loops = [tasks.create_task(part, name=name) for name, part in self._loops()]
                await stop.wait()
                await self._drain()
                for task in loops:
                    task.cancel()
        finally:
            await self._close()

    def _loops(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The named loops: health checks, the route watch (started by ``start``), the stats
        push (worker 0) and the snapshot the other workers publish for worker 0."""
        loops: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("health-checker", self.checker.run())
        ]
        if self._sync_task is not None:
            loops.append(("route-sync", _follow(self._sync_task)))
        if self.pusher is not None:
            loops.append(("stats-push", self.pusher.run()))
        if self.stats_dir is not None and self.index > 0:
            loops.append(
                ("stats", _publish(self.stats_dir, self.index, self.metrics, self.backends))
            )
        return loops

    async def _drain(self) -> None:
        """SIGTERM's path: hand the port to a successor, settle, drain in-flight requests."""
        self.log.info("lb.stopping")
        if self._steering is not None:
            self._steering.cancel()
        await self.hand_off()
        await settle(self.proxy)
        grace = self.settings.drain_timeout
        self.log.info("lb.draining", in_flight=self.proxy.in_flight, grace=grace)
        cut = await self.proxy.drain(grace)
        if self.admin is not None:
            await self.admin.drain(0.5)
        self.log.info("lb.stopped", cut=cut)

    async def _close(self) -> None:
        leftover: list[asyncio.Task[None] | None] = [
            self._steering,
            self._sync_task,
            *self._reloads,
        ]
        for pending in leftover:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
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
    admin_port: int | None = None,
    stats_dir: Path | None = None,
    listen_sock: socket.socket | None = None,
    admin_sock: socket.socket | None = None,
    generation: frozenset[int] = frozenset(),
    activated: bool = False,
) -> None:
    """Run one worker until SIGTERM/SIGINT, then hand off and drain; SIGHUP reloads."""
    lb = LoadBalancer(
        settings,
        index=index,
        stats_dir=stats_dir,
        listen_sock=listen_sock,
        admin_sock=admin_sock,
        generation=generation,
        activated=activated,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # before the start, which logs lb.listening: a signal sent on that line is handled
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lb.reload)
    await lb.start(admin_port=admin_port)
    await lb.run(stop)


async def _follow(task: asyncio.Task[None]) -> None:
    """A task started before the TaskGroup, in it (its crash stops the worker; cancelling
    this cancels it)."""
    await task


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (without listening) so that port 0 becomes one concrete port worker 0 (and a
    respawned worker 0) listens on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker_sockets(settings: LBSettings) -> list[socket.socket]:
    """Every worker's data listener, made in worker order before forking, so that worker i
    is index i of the SO_REUSEPORT group (what a handoff's steering counts on)."""
    first = reuse_port_socket(settings.host, settings.port)
    port = first.getsockname()[1]
    return [first, *(reuse_port_socket(settings.host, port) for _ in range(settings.workers - 1))]


def _supervise(settings: LBSettings, activated: list[socket.socket]) -> int:
    """Fork ``LB_WORKERS`` workers under the shared pre-fork policy (``serving/prefork.py``:
    a dead worker is respawned with back-off on the same listener, whose queue keeps the
    connections that came meanwhile; repeated fast failures stop the balancer). SIGTERM is
    passed on (each worker hands off and drains), and so is SIGHUP (reload)."""
    stats_dir = Path(tempfile.mkdtemp(prefix="zeitwork-lb-"))
    if activated:  # systemd's listener, shared by every worker (systemd holds it across restarts)
        socks = [activated[0]] * settings.workers
        admin_sock = activated[1] if len(activated) > 1 else None
    else:
        socks = _worker_sockets(settings)
        admin_sock = None
    generation = frozenset(socket_inode(sock) for sock in socks)
    admin_res: socket.socket | None = None
    if admin_sock is None:
        admin_res = _reserve(settings.admin_host, settings.admin_port)
    admin_port = (admin_sock or admin_res or socks[0]).getsockname()[1]

    def worker(index: int) -> None:
        for sock in socks:
            if sock is not socks[index]:
                sock.close()
        if admin_res is not None:
            admin_res.close()
        if admin_sock is not None and index != 0:
            admin_sock.close()
        uvloop.run(
            serve(
                settings,
                index=index,
                admin_port=admin_port,
                stats_dir=stats_dir,
                listen_sock=socks[index],
                admin_sock=admin_sock if index == 0 else None,
                generation=generation,
                activated=bool(activated),
            )
        )

    pool = WorkerPool(workers=settings.workers, target=worker, log=get_logger("zeitwork.lb"))
    try:
        return pool.run()
    finally:
        # held until every worker has gone, so that the group is not renumbered while
        # they hand off and finish (serving/handoff.py)
        if activated:
            for sock in activated:
                sock.close()
        else:
            close_generation(socks, own=generation)
        if admin_res is not None:
            admin_res.close()
        shutil.rmtree(stats_dir, ignore_errors=True)


def run(settings: LBSettings) -> int:
    configure_logging(
        service="load-balancer",
        environment=settings.environment.value,
        level=settings.log_level.value,
    )
    try:
        activated = listen_sockets()
        if settings.workers == 1:
            uvloop.run(
                serve(
                    settings,
                    listen_sock=activated[0] if activated else None,
                    admin_sock=activated[1] if len(activated) > 1 else None,
                    activated=bool(activated),
                )
            )
            return 0
        return _supervise(settings, activated)
    except OSError as exc:  # cannot bind a listener: one line, not a traceback
        print(f"zeitwork: load balancer cannot start: {exc}", file=sys.stderr)
        return 1
