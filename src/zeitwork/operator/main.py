"""Composition root of the operator: settings -> logging -> database (embedded or
DATABASE_URL) -> schema check or migration -> pool -> stores/services -> app -> uvicorn,
plus the background loops, in one TaskGroup. SIGTERM/SIGINT drain: uvicorn stops
accepting, finishes in-flight requests, the loops stop, the pool closes and the embedded
PostgreSQL (if any) is stopped.

``zeitwork migrate`` and ``zeitwork token create`` use ``database()`` too, so they work
on the same embedded server when DATABASE_URL is unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any

import structlog
import uvicorn
import uvloop
from fastapi import FastAPI

from zeitwork.core.clock import SystemClock
from zeitwork.core.errors import ZeitworkError
from zeitwork.core.process import die_with_parent
from zeitwork.observability import configure_logging, new_registry
from zeitwork.operator.app import create_app
from zeitwork.operator.db import migrate
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.embedded import EmbeddedPostgres
from zeitwork.operator.deps import Deps, build_deps
from zeitwork.operator.node_watch import NodeWatch
from zeitwork.operator.principal import Scope
from zeitwork.operator.reconcile.leader import LeaderLock
from zeitwork.operator.reconcile.loop import ReconcileLoop, Reconciler
from zeitwork.operator.reconcile.releases import ReleaseReconciler
from zeitwork.operator.secret_box import load_secret_box
from zeitwork.operator.services.events import EventPruner
from zeitwork.operator.services.reschedule import Rescheduler
from zeitwork.operator.settings import OperatorSettings
from zeitwork.webapi.serving import QuietServer, listen_tcp, on_stop_signals

log = structlog.get_logger("zeitwork.operator")


class OperatorStartupError(ZeitworkError):
    """The operator cannot start; ``detail`` is the one line shown to the user."""

    title = "Cannot start"
    code = "startup"


@asynccontextmanager
async def database(settings: OperatorSettings) -> AsyncIterator[str]:
    """The database URL: DATABASE_URL, or an embedded server started (and later stopped)
    under ``$ZEITWORK_DATA_DIR/postgres``."""
    if settings.database_url is not None:
        yield settings.database_url.get_secret_value()
        return
    embedded = await asyncio.to_thread(EmbeddedPostgres.start, settings.data_dir)
    try:
        yield embedded.url
    finally:
        await asyncio.to_thread(embedded.stop)


async def prepare_schema(settings: OperatorSettings, url: str) -> None:
    """Migrate to head (auto-migrate) or refuse an out-of-date schema with one line."""
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate.upgrade, url)
        return
    current = await asyncio.to_thread(migrate.current_revision, url)
    head = migrate.head_revision()
    if current is not None and not migrate.known_revision(current):
        raise OperatorStartupError(
            f"the database schema is at revision {current}, which this operator does not "
            f"know (it needs {head}); is a newer Zeitwork using this database?"
        )
    if current != head:
        raise OperatorStartupError(
            f"the database schema is at revision {current or 'none (empty database)'} but this "
            f"operator needs {head}; run `zeitwork migrate` or set ZEITWORK_AUTO_MIGRATE=1"
        )


def _listen(host: str, port: int, *, reuseport: bool = False) -> socket.socket:
    try:
        return listen_tcp(host, port, reuseport=reuseport, backlog=2048)
    except OSError as exc:
        raise OperatorStartupError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What an extra worker process gets from the primary: the database and the port."""

    url: str
    port: int


async def serve(
    settings: OperatorSettings,
    *,
    started: asyncio.Event | None = None,
    worker: WorkerSpec | None = None,
) -> None:
    """Run the operator until SIGTERM/SIGINT (or until the HTTP server stops).

    The primary process (``worker`` None) owns the database set-up, the admin token, the
    background loops and, with ``ZEITWORK_WORKERS`` > 1, the extra HTTP worker processes,
    which serve the same port (SO_REUSEPORT) with their own pool.
    """
    await Operator(settings, worker=worker).run(started)


class Operator:
    """One operator process: ``build()`` wires its parts (one method each: database, pool,
    dependencies, listener, HTTP server), ``run()`` serves the API and, in the primary, the
    background loops in one TaskGroup until a stop signal."""

    def __init__(self, settings: OperatorSettings, *, worker: WorkerSpec | None = None) -> None:
        self.settings = settings
        self.worker = worker
        self.primary = worker is None
        self.stopping = asyncio.Event()

    async def build(self, stack: AsyncExitStack) -> None:
        """database (embedded or DATABASE_URL; schema checked or migrated) -> pool -> secrets
        -> dependencies -> admin token -> app -> listener -> HTTP server -> stop signals;
        clean-ups go on ``stack``."""
        settings = self.settings
        if self.worker is None:
            self.url = await stack.enter_async_context(database(settings))
            await prepare_schema(settings, self.url)
        else:
            self.url = self.worker.url
        self.deps = await self._deps(stack, await self._pool(stack))
        if self.primary:
            await _bootstrap_admin(self.deps)
            await self.deps.image_service.clean_temp()  # uploads a crash left behind
        self.sock = _listen(
            settings.host,
            settings.port if self.worker is None else self.worker.port,
            reuseport=settings.workers > 1,
        )
        stack.callback(self.sock.close)
        self.server = self._http_server(create_app(deps=self.deps, registry=new_registry()))
        on_stop_signals(stack, self._request_stop)

    async def run(self, started: asyncio.Event | None = None) -> None:
        settings = self.settings
        async with AsyncExitStack() as stack:
            await self.build(stack)
            address = self.sock.getsockname()
            log.info(
                "operator.started" if self.primary else "operator.worker_started",
                host=address[0],
                port=address[1],
                embedded_db=settings.database_url is None,
                workers=settings.workers,
            )
            if started is not None:
                started.set()
            async with asyncio.TaskGroup() as tasks:
                for name, part in self._tasks(port=int(address[1])):
                    tasks.create_task(part, name=name)
        log.info("operator.stopped" if self.primary else "operator.worker_stopped")

    # -- parts ----------------------------------------------------------------------------

    async def _pool(self, stack: AsyncExitStack) -> Database:
        settings = self.settings
        db = Database(
            url=self.url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            timeout=settings.db_timeout,
        )
        await db.open(wait=True, wait_seconds=max(10.0, settings.db_timeout))
        stack.push_async_callback(db.close)
        return db

    async def _deps(self, stack: AsyncExitStack, db: Database) -> Deps:
        settings = self.settings
        box, made = await asyncio.to_thread(load_secret_box, settings)
        if made is not None:
            log.warning("operator.secrets_key_created", path=str(made))
        deps = build_deps(
            settings=settings, db=db, clock=SystemClock(), stopping=self.stopping, secret_box=box
        )
        stack.push_async_callback(deps.listener.close)
        stack.push_async_callback(deps.agent_clients.aclose)
        stack.push_async_callback(deps.image_service.aclose)
        return deps

    def _http_server(self, app: FastAPI) -> QuietServer:
        return QuietServer(
            uvicorn.Config(
                app,
                loop="none",
                http="httptools",
                lifespan="off",
                access_log=False,
                log_config=None,
                server_header=False,
                timeout_graceful_shutdown=15,
                backlog=2048,
            )
        )

    def _tasks(self, *, port: int) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The named tasks: the HTTP server; in the primary the reconcile loop, the events
        pruner and (``ZEITWORK_WORKERS`` > 1) the extra HTTP workers."""
        settings = self.settings
        tasks: list[tuple[str, Coroutine[Any, Any, None]]] = [("http", self._http())]
        if not self.primary:
            return tasks
        pruner = EventPruner(
            store=self.deps.events,
            max_age=settings.events_max_age,
            max_count=settings.events_max_count,
        )
        tasks.append(("reconcile", build_reconcile_loop(self.deps).run(self.stopping)))
        tasks.append(("events-prune", pruner.run(self.stopping)))
        if settings.workers > 1:
            spec = WorkerSpec(url=self.url, port=port)
            tasks.append(("http-workers", _supervise_workers(settings, spec, self.stopping)))
        return tasks

    def _request_stop(self, signame: str) -> None:
        if self.stopping.is_set():  # a second signal: stop without waiting for requests
            log.warning("operator.stopping_now", signal=signame)
            self.server.force_exit = True
        log.info("operator.stopping", signal=signame)
        self.stopping.set()
        self.server.should_exit = True

    async def _http(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            self.stopping.set()


def build_reconcile_loop(deps: Deps) -> ReconcileLoop:
    """The reconcile loop with its reconcilers in order: nodes, reschedule, releases."""
    settings = deps.settings
    watch = NodeWatch(nodes=deps.nodes, timeout_seconds=settings.node_heartbeat_timeout, db=deps.db)

    async def nodes() -> float | None:
        await watch.sweep()
        return None

    reconcilers = [Reconciler("nodes", nodes)]
    if settings.reschedule_after > 0:
        rescheduler = Rescheduler(
            db=deps.db,
            instances=deps.instances,
            instance_service=deps.instance_service,
            grace_seconds=settings.reschedule_after,
            locked=False,
        )

        async def reschedule() -> float | None:
            await rescheduler.sweep()
            return None

        reconcilers.append(Reconciler("reschedule", reschedule))
    releases = ReleaseReconciler(
        db=deps.db,
        releases=deps.releases,
        instances=deps.instances,
        instance_service=deps.instance_service,
    )
    reconcilers.append(Reconciler("releases", releases.sweep))
    return ReconcileLoop(
        leader=LeaderLock(db=deps.db),
        watcher=deps.watcher,
        reconcilers=reconcilers,
        interval=min(settings.reconcile_interval, max(0.5, settings.node_heartbeat_timeout / 3)),
    )


async def _supervise_workers(
    settings: OperatorSettings, spec: WorkerSpec, stopping: asyncio.Event
) -> None:
    """Start ``workers - 1`` extra HTTP processes; stop them when the operator drains. A
    worker that dies on its own stops the whole operator (loudly)."""
    context = multiprocessing.get_context("spawn")
    processes: list[BaseProcess] = []
    for number in range(1, settings.workers):
        child = context.Process(
            target=_worker_main, args=(settings, spec), name=f"zeitwork-operator-{number}"
        )
        await asyncio.to_thread(child.start)
        processes.append(child)
    try:
        while not stopping.is_set():
            dead = [p for p in processes if not p.is_alive()]
            if dead:
                raise OperatorStartupError(
                    f"operator worker {dead[0].name} exited with status {dead[0].exitcode}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=0.5)
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: the worker drains like the primary
        for process in processes:
            await asyncio.to_thread(process.join, 20)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 5)


def _worker_main(settings: OperatorSettings, spec: WorkerSpec) -> None:
    """Entry point of an extra HTTP worker process (spawned, so nothing is inherited)."""
    die_with_parent()
    configure_logging(
        service="operator", environment=settings.environment.value, level=settings.log_level.value
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, worker=spec))


async def _bootstrap_admin(deps: Deps) -> None:
    settings = deps.settings
    if settings.admin_token is not None:
        log.info("operator.admin_token", source="ZEITWORK_ADMIN_TOKEN")
        return
    path = await deps.token_service.ensure_admin_token(settings.data_dir)
    if path is not None:
        log.warning(
            "operator.admin_token_created",
            path=str(path),
            hint="read it with: cat " + str(path),
        )


def run_operator(settings: OperatorSettings) -> int:
    """Entry point of ``zeitwork operator``; returns the exit status."""
    configure_logging(
        service="operator", environment=settings.environment.value, level=settings.log_level.value
    )
    status = 0
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(settings))
    except* ZeitworkError as group:
        for exc in group.exceptions:
            detail = getattr(exc, "detail", str(exc))
            log.error("operator.failed", error=" ".join(detail.split()))  # one line
        status = 1
    return status


async def create_token(settings: OperatorSettings, scope: Scope, name: str) -> str:
    """``zeitwork token create``: a new token straight in the database; returns the secret."""
    async with database(settings) as url:
        await prepare_schema(settings, url)
        db = Database(url=url, min_size=1, max_size=1, timeout=settings.db_timeout)
        await db.open(wait=True, wait_seconds=max(10.0, settings.db_timeout))
        try:
            deps = build_deps(
                settings=settings, db=db, clock=SystemClock(), stopping=asyncio.Event()
            )
            _token, secret = await deps.token_service.issue(scope, name=name)
        finally:
            await db.close()
    return secret


async def run_migrations(settings: OperatorSettings, action: str, target: str) -> str | None:
    """``zeitwork migrate [downgrade T|current]``; returns the revision afterwards."""
    async with database(settings) as url:
        if action == "upgrade":
            await asyncio.to_thread(migrate.upgrade, url, target)
        elif action == "downgrade":
            await asyncio.to_thread(migrate.downgrade, url, target)
        return await asyncio.to_thread(migrate.current_revision, url)
