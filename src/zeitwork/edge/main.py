"""Composition root of the edge proxy: builds every part from ``EdgeSettings`` and runs it.

Listeners: plain HTTP on ``PORT`` (ACME HTTP-01 answers, redirects, apps without a
certificate), HTTPS on ``EDGE_HTTPS_PORT``, and the admin listener (``/health``,
``/metrics``) on ``EDGE_ADMIN_HOST:EDGE_ADMIN_PORT``. Traffic goes to ``LOAD_BALANCER_URL``
through the shared proxy core over pooled keep-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from zeitwork.clients.certificates import CertificateClient
from zeitwork.clients.routes import RoutesClient
from zeitwork.edge.admin import EdgeAdmin, accepts_connections
from zeitwork.edge.certificates.acme import AcmeIssuer, AcmeOptions
from zeitwork.edge.certificates.challenges import SYNC_INTERVAL, Challenges
from zeitwork.edge.certificates.internal_ca import InternalCA
from zeitwork.edge.certificates.manager import CertificateManager, account_bridge
from zeitwork.edge.certificates.static import StaticFiles
from zeitwork.edge.certificates.store import EdgeCertificateStore, LocalStore
from zeitwork.edge.certificates.x509 import inspect
from zeitwork.edge.cors import CorsConfig, CorsPolicy, parse_list
from zeitwork.edge.engine import ConnectionCaps, EdgeProxy
from zeitwork.edge.metrics import EdgeMetrics, publish, snapshot
from zeitwork.edge.policy import DomainPolicy, EdgePolicy
from zeitwork.edge.proxied_tls import ProxiedTlsListener
from zeitwork.edge.rate_limit import Quota, RateLimiter
from zeitwork.edge.routes import RouteWatch, override_policy
from zeitwork.edge.security_headers import SecurityHeaders, SecurityHeadersConfig
from zeitwork.edge.settings import EdgeSettings
from zeitwork.edge.tls import TlsTerminator
from zeitwork.edge.tls_transport import HandshakeCounter
from zeitwork.observability import get_logger, new_registry
from zeitwork.proxy import core_compiled
from zeitwork.proxy.backends import Backend, Pool
from zeitwork.proxy.h2_rules import H2Limits
from zeitwork.proxy.headers import TrustedProxies, parse_networks
from zeitwork.proxy.http2 import H2Connection
from zeitwork.proxy.server import Proxy, ProxyConfig, reuse_port_socket
from zeitwork.serving.admin import serve_admin
from zeitwork.serving.handoff import (
    close_generation,
    hand_off,
    settle,
    socket_inode,
    wait_predecessor_gone,
)
from zeitwork.serving.prefork import WorkerPool
from zeitwork.serving.steering import detach, steer_by_source

log = get_logger("zeitwork.edge")


def certificate_domains(
    *, mode: str, configured: Iterable[str], routed: frozenset[str], verified: frozenset[str]
) -> list[str]:
    """``EDGE_DOMAINS`` plus the routed hosts, only the verified ones when ordering from ACME
    (static and internal certificates ask no outside CA)."""
    return sorted({*configured, *(verified & routed if mode == "acme" else routed)})


def _lb_address(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _domain_rate_limits(spec: str, burst_default: int) -> dict[str, Quota]:
    out: dict[str, Quota] = {}
    for item in parse_list(spec):
        host, sep, limits = item.partition("=")
        rps_text, _, burst_text = limits.partition(":")
        if not sep or not rps_text:
            raise ValueError(f"EDGE_DOMAIN_RATE_LIMITS: {item!r} is not host=rps[:burst]")
        rps = float(rps_text)
        out[host.strip().lower()] = Quota(
            rps=rps, burst=int(burst_text) if burst_text else max(1, round(rps * 2)), name=host
        )
    return out


def build_policy(
    settings: EdgeSettings,
    *,
    limiter: RateLimiter,
    has_certificate: Callable[[str], bool],
    challenge_answer: Callable[[str], str | None],
    https_port: int,
) -> EdgePolicy:
    quota = Quota(rps=settings.rate_limit_rps, burst=settings.burst)
    origins = parse_list(settings.cors_origins)
    cors = (
        CorsPolicy(
            CorsConfig(
                origins=origins,
                methods=parse_list(settings.cors_methods),
                headers=parse_list(settings.cors_headers),
                expose_headers=parse_list(settings.cors_expose_headers),
                credentials=settings.cors_credentials,
                max_age=settings.cors_max_age,
            )
        )
        if origins
        else None
    )
    security = SecurityHeaders(
        SecurityHeadersConfig(
            hsts_max_age=settings.hsts_max_age,
            hsts_include_subdomains=settings.hsts_include_subdomains,
            frame_options=settings.frame_options or None,
            referrer_policy=settings.referrer_policy or None,
            permissions_policy=settings.permissions_policy or None,
            content_security_policy=settings.content_security_policy or None,
            override=frozenset(parse_list(settings.header_override)),
        )
    )
    default = DomainPolicy(quota=quota, cors=cors, security=security)
    domains = {
        host: DomainPolicy(quota=q, cors=cors, security=security, limit_key="|" + host)
        for host, q in _domain_rate_limits(settings.domain_rate_limits, settings.burst).items()
    }
    for raw_host, override in settings.domain_overrides.items():
        host = raw_host.strip().lower()
        base = domains.get(host, default)
        domains[host] = override_policy(host, override, base=base, global_security=security)
    policy = EdgePolicy(
        default=default,
        domains=domains,
        limiter=limiter,
        has_certificate=has_certificate,
        challenge_answer=challenge_answer,
        https_port=https_port,
    )
    policy.known_hosts.update(parse_list(settings.domains))
    policy.known_hosts.update(domains)
    return policy


@dataclass
class Edge:
    """A running edge (one worker): its listeners, certificate loop and admin endpoint."""

    settings: EdgeSettings
    registry: CollectorRegistry = field(default_factory=new_registry)
    store: EdgeCertificateStore | None = None
    index: int = 0  # worker number; worker 0 orders certificates and serves the admin port
    # (http, https) listening sockets the supervisor made for this worker (else made here)
    listen_socks: tuple[socket.socket, socket.socket] | None = None
    stats_dir: Path | None = None  # where workers publish counters for worker 0's /metrics
    # the inodes of every listening socket of this edge's workers (a handoff skips them)
    generation: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        s = self.settings
        self.handshakes = HandshakeCounter()
        self.tls = TlsTerminator(default_domain=s.default_domain, http2=s.http2)
        shared = s.data_dir / "edge" / "challenges" if s.worker_count > 1 else None
        self.challenges = Challenges(tls=self.tls, directory=shared)
        self.limiter = RateLimiter(capacity=s.rate_limit_capacity)
        self.metrics = EdgeMetrics(registry=self.registry)
        self.ports: dict[str, int] = {}
        self._serving: asyncio.Task[None] | None = None
        self._admin: Proxy | None = None
        self._operator: CertificateClient | None = None
        self._static: StaticFiles | None = None
        self._static_names: list[str] = []
        self.manager: CertificateManager | None = None
        self.proxy: Proxy | None = None
        self.policy: EdgePolicy | None = None
        self.route_hosts: frozenset[str] = frozenset()
        self.route_verified: frozenset[str] = frozenset()
        self.route_watch: RouteWatch | None = None
        self._routes_client: RoutesClient | None = None
        self._listening: tuple[socket.socket, ...] = ()

    def domains(self) -> list[str]:
        """Hosts to hold certificates for: ``EDGE_DOMAINS`` and the routed hosts; with ACME,
        only the routed hosts whose domain is verified (a CA is never asked for a name
        nobody proved to own)."""
        return certificate_domains(
            mode=self.settings.effective_tls_mode,
            configured=parse_list(self.settings.domains),
            routed=self.route_hosts,
            verified=self.route_verified,
        )

    def _verified_changed(self, verified: frozenset[str]) -> None:
        self.route_verified = verified

    def _hosts_changed(self, hosts: frozenset[str]) -> None:
        if hosts != self.route_hosts:
            self.route_hosts = hosts
            if self.manager is not None:
                self.manager.wake.set()

    def _store(self) -> EdgeCertificateStore:
        if self.store is not None:
            return self.store
        s = self.settings
        if s.operator_url and s.operator_token is not None:
            self._operator = CertificateClient(
                base_url=s.operator_url, token=s.operator_token.get_secret_value()
            )
            return self._operator
        return LocalStore(directory=s.data_dir / "edge" / "certificates")

    async def build(self) -> None:
        """Wire the parts and listen: sockets -> policy -> proxy -> certificate manager ->
        metrics -> listeners (plain, TLS, worker 0's admin port) -> route watch."""
        s = self.settings
        plain_sock, tls_sock = self._listeners()
        self.policy = build_policy(
            s,
            limiter=self.limiter,
            has_certificate=self.tls.has_certificate if s.https_redirect else _never,
            challenge_answer=self.challenges.answer,
            https_port=s.public_https_port or tls_sock.getsockname()[1],
        )
        self.proxy = self._edge_proxy(self.policy)
        self.manager = manager = self._certificate_manager()
        self.metrics.watch(
            policy=self.policy,
            limiter=self.limiter,
            handshakes=self.handshakes,
            caps=self.caps,
            expiries=self.tls.expiries,
            stats_dir=self.stats_dir,
            index=self.index,
            failing=lambda: manager.failing,
        )
        if s.effective_tls_mode == "internal" and self.index == 0:
            await manager.sync_once()  # serve the platform's domains from the first request
        await self._listen(self.proxy, plain_sock, tls_sock)
        self.route_watch = self._route_watch(self.policy)

    async def run(self) -> None:
        """Run until SIGTERM/SIGINT, then hand off, settle and drain; SIGHUP reloads."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # before the build, whose loops log edge.started: a signal sent on that line is handled
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.build()
            await self.serve(stop)
        finally:
            await self.stop()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def serve(self, stop: asyncio.Event) -> None:
        """The loops in one TaskGroup until ``stop`` is set, then hand over to a successor (a
        crashed loop ends the group, and the edge, without a handoff)."""
        async with asyncio.TaskGroup() as tasks:
            loops = [
                tasks.create_task(_logged(name, part), name=name) for name, part in self._loops()
            ]
            if self.index == 0:
                log.info("proxy.core", compiled=core_compiled())
            log.info("edge.started", tls_mode=self.settings.effective_tls_mode, **self.ports)
            await stop.wait()
            log.info("edge.stopping")
            await self.hand_off()
            if self.proxy is not None:
                for conn in list(self.proxy.connections):
                    if isinstance(conn, H2Connection):
                        conn.close()  # GOAWAY now: its open streams finish, no new ones start
                await settle(self.proxy)  # busy keep-alive connections end after their response
            for task in loops:
                task.cancel()

    async def start(self) -> None:
        """Build and run the loops in the background (an edge embedded in a test or another
        program); ``stop`` ends them and drains, without a handoff."""
        await self.build()
        self._serving = asyncio.create_task(self.serve(asyncio.Event()), name="edge.serve")

    # -- parts ----------------------------------------------------------------------------

    def _listeners(self) -> tuple[socket.socket, socket.socket]:
        """This worker's (http, https) sockets: the supervisor's, else made here."""
        s = self.settings
        if self.listen_socks is not None:
            plain_sock, tls_sock = self.listen_socks
        else:
            # SO_REUSEPORT with one worker too: a successor can listen beside this edge
            # before it stops (serving/handoff.py)
            plain_sock = reuse_port_socket(s.host, s.port)
            tls_sock = reuse_port_socket(s.host, s.https_port)
        self._listening = (plain_sock, tls_sock)
        self.generation = self.generation | {socket_inode(plain_sock), socket_inode(tls_sock)}
        return plain_sock, tls_sock

    def _edge_proxy(self, policy: EdgePolicy) -> EdgeProxy:
        """The proxy core towards the load balancer, with the edge's policy and caps."""
        s = self.settings
        pool = Pool("load-balancer", backends=[Backend(_lb_address(s.load_balancer_url))])
        trusted = TrustedProxies(parse_networks(s.trusted_proxies))
        self.caps = ConnectionCaps(
            per_ip=s.max_connections_per_ip, total=s.max_connections, exempt=trusted
        )
        config = ProxyConfig(
            connect_timeout=s.connect_timeout,
            header_timeout=s.header_timeout,
            idle_timeout=s.idle_timeout,
            first_byte_timeout=s.first_byte_timeout,
            stream_idle_timeout=s.stream_idle_timeout,
            tunnel_idle_timeout=s.tunnel_idle_timeout,
            max_body=s.max_body,
        )
        return EdgeProxy(
            handshakes=self.handshakes,
            proxy_protocol=s.proxy_protocol,
            router=policy.route_to(pool),  # routes' limits: edge/routes.py
            config=config,
            policy=policy,
            limiter=self.caps,
            trusted=trusted,
            http2=s.http2,
            h2c=s.h2c,
            h2_limits=H2Limits(
                max_concurrent_streams=s.h2_max_streams,
                max_header_list_size=s.h2_max_header_list,
                initial_window_size=s.h2_stream_window,
                connection_window=s.h2_connection_window,
                max_resets=s.h2_max_resets,
            ),
        )

    def _certificate_manager(self) -> CertificateManager:
        """The manager for the TLS mode: static files, the internal CA or ACME."""
        s = self.settings
        store = self._store()
        mode = s.effective_tls_mode
        issuer: AcmeIssuer | None = None
        ca: InternalCA | None = None
        share_ca: Callable[[], Awaitable[InternalCA]] | None = None
        if mode == "static":
            assert s.ssl_cert_path is not None and s.ssl_key_path is not None
            self._static = StaticFiles(cert_path=s.ssl_cert_path, key_path=s.ssl_key_path)
            for path in (s.ssl_cert_path, s.ssl_key_path):
                path.read_bytes()  # an unreadable file is a start-up error (OSError), not a warning
            self._reload_static()
        elif mode == "internal":
            if self.index == 0:  # only worker 0 issues; the others serve what it stored
                # this edge's own CA until the manager has the one every edge shares
                # through the store (its first pass, or a later one if the operator is down)
                directory = s.data_dir / "edge" / "ca"
                ca = InternalCA.load_or_create(directory)

                async def share_ca() -> InternalCA:
                    return await InternalCA.shared(directory, store)
        else:
            issuer = self._acme_issuer(store)
        return CertificateManager(
            store=store,
            tls=self.tls,
            mode=mode,
            domains=self.domains,
            holder=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            internal_ca=ca,
            share_ca=share_ca,
            issuer=issuer,
            on_order=lambda source, result: self.metrics.certificate_orders.labels(
                source, result
            ).inc(),
            retry_base=s.acme_retry_base,
            orders=self.index == 0,
        )

    def _acme_issuer(self, store: EdgeCertificateStore) -> AcmeIssuer:
        s = self.settings
        load, save = account_bridge(store, asyncio.get_running_loop())
        return AcmeIssuer(
            options=AcmeOptions(
                directory=s.acme_directory,
                ca_bundle=str(s.acme_ca_bundle) if s.acme_ca_bundle else None,
                email=s.acme_email,
                challenge=s.acme_challenge,
            ),
            board=self.challenges,
            load_account=load,
            save_account=save,
        )

    async def _listen(
        self, proxy: EdgeProxy, plain_sock: socket.socket, tls_sock: socket.socket
    ) -> None:
        """Accept: plain HTTP, TLS (behind the PROXY protocol or not), worker 0's admin port."""
        s = self.settings
        await proxy.serve(plain_sock)
        if s.proxy_protocol:
            proxied = ProxiedTlsListener(
                proxy=proxy,
                ssl_context=self.tls.server_context,
                handshake_timeout=s.handshake_timeout,
                header_timeout=s.header_timeout,
                server_names=self.tls.server_names,
            )
            server = await asyncio.get_running_loop().create_server(
                proxied.protocol_factory(), sock=tls_sock, backlog=1024
            )
            proxy.listening(server)
        else:
            await proxy.serve(
                tls_sock,
                ssl_context=self.tls.server_context,
                ssl_handshake_timeout=s.handshake_timeout,
                server_names=self.tls.server_names,
            )
        self.ports = {"http": plain_sock.getsockname()[1], "https": tls_sock.getsockname()[1]}
        if self.index == 0:
            admin_sock = reuse_port_socket(s.admin_host, s.admin_port)
            self._admin = await serve_admin(
                EdgeAdmin(registry=self.registry, lb_reachable=self.lb_reachable), admin_sock
            )
            self.ports["admin"] = admin_sock.getsockname()[1]

    def _route_watch(self, policy: EdgePolicy) -> RouteWatch | None:
        """The operator's route table (per-domain policies, routed hosts), when configured."""
        s = self.settings
        if not s.operator_url or s.operator_token is None:
            return None
        self._routes_client = RoutesClient(
            base_url=s.operator_url, token=s.operator_token.get_secret_value()
        )
        return RouteWatch(
            source=self._routes_client,
            policy=policy,
            static=dict(policy.domains),
            on_hosts=self._hosts_changed,
            on_verified=self._verified_changed,
        )

    def _loops(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The named loops: certificates, static files, stats, steering, TLS-ALPN challenge
        sync (other workers) and the route watch."""
        s = self.settings
        assert self.manager is not None
        # workers other than 0 only pick up what worker 0 (or another edge) stored: poll often
        interval = s.cert_check_interval if self.index == 0 else min(s.cert_check_interval, 2.0)
        loops: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("edge.certificates", self.manager.run(interval))
        ]
        if self._static is not None:
            loops.append(("edge.static-cert", self._watch_static()))
        if self.stats_dir is not None and self.index != 0:
            loops.append(("edge.stats", self._publish_stats()))
        if s.worker_count > 1 and self.index == 0:
            loops.append(("edge.steering", self._restore_steering()))
        if s.worker_count > 1 and self.index != 0:
            loops.append(("edge.tls-alpn-sync", self._sync_challenges()))
        if self.route_watch is not None:
            loops.append(("edge.routes", self.route_watch.run()))
        return loops

    def _reload_static(self) -> None:
        assert self._static is not None
        polled = self._static.poll()
        if polled is None:
            return
        stamp, chain, key = polled
        names = list(inspect(chain, key).names)
        if not names:
            self.tls.set_default(chain, key)
        for i, name in enumerate(names):
            # the first name is also the default: clients without (or with an unknown) SNI
            self.tls.install(name, chain, key, default=i == 0)
        for gone in set(self._static_names) - set(names):
            self.tls.remove(gone)
        self._static_names = names
        self._static.accept(stamp)
        log.info("certificate.static_loaded", names=names)

    async def _sync_challenges(self) -> None:
        while True:
            self.challenges.sync_tls_alpn()
            await asyncio.sleep(SYNC_INTERVAL)

    async def _watch_static(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self._reload_static()
            except (OSError, ValueError) as exc:
                log.warning("certificate.static_unusable", error=str(exc))

    async def _publish_stats(self) -> None:
        assert self.stats_dir is not None and self.policy is not None
        while True:
            publish(
                self.stats_dir,
                self.index,
                snapshot(self.policy, self.limiter, self.handshakes, self.caps),
            )
            await asyncio.sleep(2.0)

    async def lb_reachable(self) -> bool:
        host, _, port = _lb_address(self.settings.load_balancer_url).rpartition(":")
        return await accepts_connections(host.strip("[]"), int(port))

    def reload(self) -> None:
        """SIGHUP: re-read the certificate files and the certificate store now. Open
        connections are untouched; new handshakes get what was reloaded. (Settings come
        from the environment, read once: change them with a restart, see ``hand_off``.)"""
        static = "unchanged"
        if self._static is not None:
            try:
                self._reload_static()
                static = "checked"
            except (OSError, ValueError) as exc:
                static = "unusable"
                log.warning("certificate.static_unusable", error=str(exc))
        if self.manager is not None:
            self.manager.wake.set()  # its next pass loads every stored certificate
        log.info("edge.reloaded", worker=self.index, static=static, domains=len(self.tls.domains()))

    async def hand_off(self) -> bool:
        """SIGTERM: before the listeners close, wait up to ``EDGE_HANDOFF_TIMEOUT`` s for a
        successor listening on the same ports and steer new connections to it, so that no
        connection is refused (serving/handoff.py). True when one took over."""
        outcome = await hand_off(
            self._listening,
            own=self.generation,
            wait=self.settings.handoff_timeout,
            shared=self.listen_socks is not None,
        )
        if outcome.error is not None:
            log.warning("edge.handoff_failed", worker=self.index, error=outcome.error)
            return False
        if outcome.successor is None:
            log.info("edge.no_successor", worker=self.index, waited=self.settings.handoff_timeout)
            return False
        log.info(
            "edge.handed_off",
            worker=self.index,
            successor_sockets=outcome.successor,
            still_queued=outcome.queued,
        )
        return True

    async def _restore_steering(self) -> None:
        """Started beside a predecessor (a handoff), whose last program steers past this
        generation's sockets once it has gone: steer by client address again then."""
        try:
            if not await wait_predecessor_gone(self._listening, own=self.generation):
                return  # a plain start: the supervisor's steering stands
        except OSError:
            return  # the listeners closed meanwhile (a stop right after the start)
        try:
            for sock in self._listening:
                if self.settings.trusted_proxies:
                    detach(sock)  # the kernel's spreading, as at start (_worker_sockets)
                else:
                    steer_by_source(sock, self.settings.worker_count)
        except OSError as exc:
            log.warning("edge.steering_unavailable", error=str(exc))
            return
        log.info("edge.steering_restored", workers=self.settings.worker_count)

    async def stop(self) -> None:
        """End the loops of a background ``start`` (if any), then drain and close."""
        try:
            if self._serving is not None and not self._serving.done():
                self._serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._serving
        finally:
            if self._admin is not None:
                await self._admin.drain(0.5)
            if self.proxy is not None:
                await self.proxy.drain(self.settings.drain_timeout)
            if self._operator is not None:
                await self._operator.aclose()
            if self._routes_client is not None:
                await self._routes_client.aclose()

    def certificate_expiries(self) -> dict[str, datetime]:
        return self.tls.expiries()


def _never(host: str) -> bool:
    """``has_certificate`` when redirects are off (EDGE_HTTPS_REDIRECT=false)."""
    return False


async def _logged(name: str, loop: Coroutine[Any, Any, None]) -> None:
    """A loop of the edge's TaskGroup: its crash is logged with its name, then ends the edge."""
    try:
        await loop
    except Exception as exc:
        log.error("edge.loop_crashed", task=name, error=str(exc))
        raise


async def run(
    settings: EdgeSettings,
    *,
    index: int = 0,
    listen_socks: tuple[socket.socket, socket.socket] | None = None,
    stats_dir: Path | None = None,
    generation: frozenset[int] = frozenset(),
) -> None:
    """Run one edge worker until SIGTERM/SIGINT, then hand off and drain; SIGHUP reloads."""
    edge = Edge(
        settings,
        index=index,
        listen_socks=listen_socks,
        stats_dir=stats_dir,
        generation=generation,
    )
    await edge.run()


def _worker_sockets(settings: EdgeSettings) -> list[tuple[socket.socket, socket.socket]]:
    """Every worker's (http, https) listening sockets, made in worker order before forking so
    that worker i is index i of both SO_REUSEPORT groups; with no trusted proxies, each
    client address is steered to one worker (``steering``)."""
    count = settings.worker_count
    plain = [reuse_port_socket(settings.host, settings.port)]
    tls = [reuse_port_socket(settings.host, settings.https_port)]
    ports = (plain[0].getsockname()[1], tls[0].getsockname()[1])
    for _ in range(count - 1):
        plain.append(reuse_port_socket(settings.host, ports[0]))
        tls.append(reuse_port_socket(settings.host, ports[1]))
    if settings.trusted_proxies:
        # clients behind a proxy arrive from its address: steering by address would send
        # all of them to one worker; the kernel's spreading is kept (limits per worker)
        log.info("edge.steering", by="connection", reason="trusted proxies in front")
    else:
        try:
            steer_by_source(plain[0], count)
            steer_by_source(tls[0], count)
            log.info("edge.steering", by="client address")
        except OSError as exc:
            log.warning("edge.steering_unavailable", error=str(exc))
    return list(zip(plain, tls, strict=True))


def serve_workers(settings: EdgeSettings) -> int:
    """Fork ``EDGE_WORKERS`` processes sharing the ports (SO_REUSEPORT) under the shared
    pre-fork policy (``serving/prefork.py``: a dead worker is respawned with back-off on its
    own listeners, so steering keeps its place; repeated fast failures stop the edge, exit
    1); SIGTERM drains all, SIGHUP reloads all."""
    import uvloop

    # Build the policy once here so a bad policy is a configuration error, not a crashed worker.
    build_policy(
        settings,
        limiter=RateLimiter(capacity=1),
        has_certificate=lambda host: False,
        challenge_answer=lambda token: None,
        https_port=settings.redirect_port,
    )
    if settings.effective_tls_mode == "static":
        assert settings.ssl_cert_path is not None and settings.ssl_key_path is not None
        inspect(settings.ssl_cert_path.read_text(), settings.ssl_key_path.read_text())
    count = settings.worker_count
    if count <= 1:
        try:
            uvloop.run(run(settings))
        except ExceptionGroup:  # a crashed loop (logged as edge.loop_crashed) ended the edge
            return 1
        return 0
    socks = _worker_sockets(settings)
    generation = frozenset(socket_inode(sock) for pair in socks for sock in pair)
    ports = (socks[0][0].getsockname()[1], socks[0][1].getsockname()[1])
    stats_dir = Path(tempfile.mkdtemp(prefix="zeitwork-edge-stats-"))

    def worker(index: int) -> None:
        for other, pair in enumerate(socks):
            if other != index:
                for sock in pair:
                    sock.close()
        uvloop.run(
            run(
                settings,
                index=index,
                listen_socks=socks[index],
                stats_dir=stats_dir,
                generation=generation,
            )
        )

    pool = WorkerPool(workers=count, target=worker, log=log)
    log.info("edge.workers_started", workers=count, http=ports[0], https=ports[1])
    try:
        return pool.run()
    finally:
        # the supervisor keeps its copies of the listeners until the workers are gone: a
        # handoff's steering then keeps naming the successor's sockets while the workers
        # close theirs one by one (handoff.close_generation)
        for port_socks in zip(*socks, strict=True):
            close_generation(port_socks, own=generation)
        shutil.rmtree(stats_dir, ignore_errors=True)
