"""``zeitwork builder``: lease build jobs from the operator and run them, one at a time.

The loop long-polls ``POST /builder/lease`` (``BUILDER_POLL_WAIT`` seconds), runs a job it
gets (``runner.Runner``) and asks again. ``/health``, ``/health/ready`` (the operator
answered the last lease call) and ``/metrics`` listen on ``HOST:PORT`` (127.0.0.1:9085).

When the queue has nothing for it (after a job the builder asks once without waiting), and
at start, the layer caches are trimmed and pruned (``cache``: ``BUILDER_CACHE_MAX_SIZE``,
``BUILDER_CACHE_MAX_AGE``), never one a build holds; so back-to-back builds do not wait for
it. A builder that never runs out of jobs prunes between two of them every ``PRUNE_EVERY``
seconds; an idle one every ``PRUNE_EVERY`` seconds too (caches past their age).

SIGTERM/SIGINT: no new job is leased; a running build gets ``BUILDER_DRAIN_TIMEOUT``
seconds to finish, then it is stopped (its processes killed) and its job handed back to the
queue, so another builder runs it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from zeitwork import __version__
from zeitwork.builder import limits
from zeitwork.builder.cache import LayerCaches, Policy
from zeitwork.builder.runner import Runner, builder_version
from zeitwork.builder.settings import BuilderSettings
from zeitwork.clients.builds import BuilderClient
from zeitwork.core.errors import AuthenticationRequired, PermissionDenied, ZeitworkError
from zeitwork.observability import configure_logging, get_logger, new_registry
from zeitwork.webapi import install_common
from zeitwork.webapi.serving import QuietServer, listen_tcp, on_stop_signals
from zeitwork.wire.builds import LeaseRequest

log = get_logger("zeitwork.builder")

RETRY_SECONDS = 2.0
PRUNE_EVERY = 600.0


class BuilderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.finished = Counter(
            "zeitwork_builder_builds_total",
            "Builds this builder ran, by outcome",
            ["state"],
            registry=registry,
        )
        self.seconds = Histogram(
            "zeitwork_builder_build_seconds",
            "Wall-clock seconds of a build, lease to finish",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800),
            registry=registry,
        )
        self.running = Gauge("zeitwork_builder_running", "Builds running now", registry=registry)
        self.cache_bytes = Gauge(
            "zeitwork_builder_cache_bytes",
            "Disk bytes of the projects' layer caches, at the last prune",
            registry=registry,
        )
        self.cache_freed = Counter(
            "zeitwork_builder_cache_freed_bytes_total",
            "Bytes the pruning freed, by why (age, size, trimmed)",
            ["reason"],
            registry=registry,
        )


class Builder:
    def __init__(self, settings: BuilderSettings, client: BuilderClient) -> None:
        self.settings = settings
        self.client = client
        self.caches = LayerCaches(
            root=settings.root / "cache",
            buildah=settings.buildah,
            storage_driver=settings.storage_driver,
            policy=Policy(
                max_bytes=limits.parse_size(settings.cache_max_size),
                max_age=settings.cache_max_age,
            ),
        )
        self.runner = Runner(settings=settings, client=client, caches=self.caches)
        self.last_prune = 0.0
        self.to_trim: set[str] = set()
        """projects built since the last prune"""
        self.prune_due = False
        self.stopping = asyncio.Event()
        self.job_stop = asyncio.Event()
        self.last_error: str | None = "not connected yet"
        self.registry = new_registry()
        self.metrics = BuilderMetrics(self.registry)
        self.current: str | None = None

    async def loop(self) -> None:
        request = LeaseRequest(owner=self.settings.builder_id, builder_version=builder_version())
        await self.prune()
        while not self.stopping.is_set():
            wait = 0.0 if self.prune_due else self.settings.poll_wait
            lease = asyncio.ensure_future(self.client.lease(request, wait=wait))
            stop = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait({lease, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not lease.done():
                lease.cancel()
                with contextlib.suppress(asyncio.CancelledError, ZeitworkError):
                    await lease
                # a lease the operator granted as we gave up expires and is run elsewhere
                return
            try:
                job = lease.result()
            except (AuthenticationRequired, PermissionDenied) as exc:
                self.last_error = exc.detail
                log.error("builder.refused", error=exc.detail)
                await self._pause(RETRY_SECONDS * 5)
                continue
            except ZeitworkError as exc:
                self.last_error = exc.detail
                log.warning("builder.lease_failed", error=exc.detail)
                await self._pause(RETRY_SECONDS)
                continue
            self.last_error = None
            if job is None:
                if self.prune_due or time.monotonic() - self.last_prune > PRUNE_EVERY:
                    await self.prune()
                continue
            self.current = str(job.build.id)
            self.metrics.running.set(1)
            started = time.monotonic()
            log.info(
                "build.started",
                build_id=str(job.build.id),
                project=job.project_slug,
                attempt=job.build.attempts,
            )
            try:
                outcome = await self.runner.run(job, self.job_stop)
            finally:
                self.metrics.running.set(0)
                self.current = None
            self.metrics.finished.labels(outcome.state).inc()
            self.metrics.seconds.observe(time.monotonic() - started)
            if outcome.image_id is not None and not outcome.skipped:
                self.to_trim.add(str(job.build.project_id))
            self.prune_due = True
            if time.monotonic() - self.last_prune > PRUNE_EVERY:
                await self.prune()  # the queue never ran dry: prune between two jobs

    async def prune(self) -> None:
        """Trim the projects built since the last time (their older images), then prune
        the caches."""
        self.last_prune = time.monotonic()
        self.prune_due = False
        built, self.to_trim = self.to_trim, set()
        try:
            for project in sorted(built):
                await self.caches.trim(project)
            for _project, reason, freed in await self.caches.prune():
                self.metrics.cache_freed.labels(reason).inc(freed)
        except OSError as exc:  # a full or failing disk: the next pass tries again
            log.warning("builder.cache_prune_failed", error=str(exc))
            return
        self.metrics.cache_bytes.set(self.caches.total_bytes)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def drain(self, work: asyncio.Task[None]) -> None:
        """After SIGTERM: let a running build finish within the drain timeout, then stop it
        (the runner hands its job back)."""
        await self.stopping.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(work), self.settings.drain_timeout)
            return
        log.info("builder.drain_timeout", build_id=self.current)
        self.job_stop.set()


def create_app(builder: Builder) -> FastAPI:
    app = FastAPI(title="Zeitwork builder", version=__version__)

    async def operator_ready() -> str | None:
        return builder.last_error

    install_common(
        app, service="builder", registry=builder.registry, readiness=[("operator", operator_ready)]
    )

    @app.get("/status", include_in_schema=False)
    async def status() -> dict[str, object]:
        return {
            "builder_id": builder.settings.builder_id,
            "building": builder.current,
            "stopping": builder.stopping.is_set(),
            "last_error": builder.last_error,
        }

    return app


async def serve(settings: BuilderSettings) -> int:
    if settings.token is None:
        log.error("builder.no_token", hint="set ZEITWORK_BUILDER_TOKEN to a builder token")
        return 2
    client = BuilderClient(base_url=settings.operator_url, token=settings.token.get_secret_value())
    builder = Builder(settings, client)
    await asyncio.to_thread(settings.root.mkdir, parents=True, exist_ok=True)
    sock = listen_tcp(settings.host, settings.port)
    server = QuietServer(
        uvicorn.Config(
            create_app(builder),
            loop="none",
            http="h11",
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
    )
    async with contextlib.AsyncExitStack() as stack:

        def request_stop(signame: str) -> None:
            log.info("builder.stopping", signal=signame, building=builder.current)
            builder.stopping.set()

        on_stop_signals(stack, request_stop)
        host, port = sock.getsockname()[:2]
        log.info(
            "builder.started",
            host=host,
            port=port,
            operator=settings.operator_url,
            builder_id=settings.builder_id,
            work_dir=str(settings.root),
            storage_driver=settings.storage_driver,
        )
        http = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        work = asyncio.create_task(builder.loop(), name="builds")
        drain = asyncio.create_task(builder.drain(work), name="drain")
        try:
            await work
        finally:
            drain.cancel()
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await drain
            await http
            await client.aclose()
            sock.close()
    log.info("builder.stopped")
    return 0


def run(settings: BuilderSettings) -> int:
    configure_logging(
        service="builder", environment=settings.environment.value, level=settings.log_level.value
    )
    return asyncio.run(serve(settings))
