"""Composition root of the node agent.

``NodeAgent.build()`` wires: settings -> host facts and capacity -> runtime choice (registry)
-> node network (bridge, NAT, routes) -> image cache -> operator link -> supervisor (recover:
re-adopt, clean strays) -> API -> uvicorn; ``run()`` starts the loops (supervisor,
registration + heartbeats, assignments, reports) and the API as named tasks in one TaskGroup.
SIGTERM/SIGINT stop the loops and the API and leave the instances running (an agent upgrade
must not take apps down); with ``drain`` they are stopped first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import uvicorn

from zeitwork import __version__
from zeitwork.agent import agent_token, hostinfo
from zeitwork.agent.api import create_app
from zeitwork.agent.images import NodeImages
from zeitwork.agent.network import NodeNetwork, PeerRoute
from zeitwork.agent.operator_link import CredentialFile, OperatorLink, agent_url_for
from zeitwork.agent.plan import Tuning
from zeitwork.agent.settings import DEFAULT_NODE_SUBNET, AgentSettings
from zeitwork.agent.state_store import StateStore
from zeitwork.agent.supervisor import Supervisor
from zeitwork.clients.operator import OperatorClient
from zeitwork.core.errors import InvalidInput, ZeitworkError
from zeitwork.core.files import atomic_write_json
from zeitwork.core.resources import Resources
from zeitwork.images import ImageCache
from zeitwork.observability import configure_logging, get_logger, new_registry
from zeitwork.runtime import registry as runtimes
from zeitwork.runtime.base import Driver
from zeitwork.webapi.serving import QuietServer, listen_tcp, on_stop_signals
from zeitwork.wire.agent import Assignments, InstanceStatus, InstanceStatusReport

log = get_logger(__name__)


class StartupError(ZeitworkError):
    title = "Start-up failed"
    code = "startup-failed"


def _listen(host: str, port: int) -> socket.socket:
    try:
        return listen_tcp(host, port)
    except OSError as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def build_driver(settings: AgentSettings, data: Path) -> tuple[Driver, runtimes.Choice]:
    offer = runtimes.probe(
        firecracker_bin=settings.firecracker_bin,
        jailer_bin=settings.jailer_bin,
        kernel=settings.firecracker_kernel,
        oci_runtime=settings.oci_runtime,
    )
    try:
        choice = runtimes.choose(settings.runtime, offer)
    except InvalidInput as exc:
        raise StartupError(exc.detail) from exc
    if choice.name == "firecracker":
        assert settings.firecracker_bin and settings.jailer_bin and settings.firecracker_kernel
        driver = runtimes.build_firecracker(
            firecracker_bin=settings.firecracker_bin,
            jailer_bin=settings.jailer_bin,
            kernel=settings.firecracker_kernel,
            work_dir=settings.vm_work_dir,
        )
    else:
        driver = runtimes.build_oci(
            runtime_binary=offer.oci_runtime or settings.oci_runtime,
            runc_root=settings.run_dir / "runc",
            state_dir=data / "oci",
            cgroup_parent=settings.cgroup_parent,
            log_max_bytes=settings.instance_log_max_bytes,
        )
    log.info("runtime.chosen", runtime=choice.name, reason=choice.reason)
    return driver, choice


async def serve(
    settings: AgentSettings, *, drain: bool = False, started: asyncio.Event | None = None
) -> None:
    """Run the agent until SIGTERM/SIGINT."""
    await NodeAgent(settings, drain=drain).run(started)


class NodeAgent:
    """The agent's parts: ``build()`` wires them (one method per part), ``run()`` runs its
    loops and the API in one TaskGroup until a stop signal, then settles (and drains)."""

    def __init__(self, settings: AgentSettings, *, drain: bool = False) -> None:
        self.settings = settings
        self.drain = drain
        self.data = settings.data_dir / "agent"
        self.subnet_file = self.data / "subnet.json"
        self.stopping = asyncio.Event()
        self.peers_wanted: list[PeerRoute] | None = None
        self.peers_changed = asyncio.Event()
        self.client: OperatorClient | None = None
        self.link: OperatorLink | None = None
        self.supervisor: Supervisor | None = None
        self.runtime_version = "unknown"

    async def build(self, stack: AsyncExitStack) -> None:
        """settings -> host facts -> runtime -> token -> listener -> operator link -> node
        network -> images -> supervisor (recovered) -> API; clean-ups go on ``stack``."""
        settings = self.settings
        self.data.mkdir(parents=True, exist_ok=True)
        self.data.chmod(0o700)
        self.facts = hostinfo.facts(settings.data_dir)
        self.capacity = hostinfo.capacity(
            self.facts,
            reserve=Resources.of(
                vcpu=settings.reserved_vcpu,
                memory_mib=settings.reserved_memory_mib,
                disk_mib=settings.reserved_disk_mib,
            ),
        )
        self.driver, self.choice = build_driver(settings, self.data)
        await self._probe_runtime_version()
        peer_routes = [
            PeerRoute.parse(item)
            for item in (part.strip() for part in settings.peer_routes.split(","))
            if item
        ]
        try:
            self.own_token = agent_token.load_or_create(self.data / "agent_token")
        except (InvalidInput, OSError) as exc:
            raise StartupError(f"agent token: {getattr(exc, 'detail', exc)}") from exc
        # listening first: the port (PORT=0 picks one) goes into the registration
        self.sock = _listen(settings.host, settings.port)
        stack.callback(self.sock.close)
        self.host, self.port = self.sock.getsockname()[:2]
        if settings.operator_url:
            self.client = OperatorClient(base_url=settings.operator_url)
            stack.push_async_callback(self.client.aclose)
        self.ip_address = settings.node_ip or hostinfo.detect_ip(settings.operator_url)
        self.hostname = settings.node_hostname or hostinfo.hostname()
        if self.client is not None:
            self.link = self._operator_link(self.client)
        self.network = await self._node_network(peer_routes)
        images = await self._node_images(stack)
        self.supervisor = await self._recovered_supervisor(images)
        stack.push_async_callback(self.supervisor.close)
        self.server = self._api_server()
        atomic_write_json(self.data / "listen.json", {"host": self.host, "port": self.port})
        on_stop_signals(stack, self._request_stop)

    async def run(self, started: asyncio.Event | None = None) -> None:
        async with AsyncExitStack() as stack:
            await self.build(stack)
            supervisor = self.supervisor
            assert supervisor is not None
            log.info(
                "agent.started",
                host=self.host,
                port=self.port,
                runtime=self.choice.name,
                operator=self.settings.operator_url,
                instances=len(supervisor.records),
            )
            if started is not None:
                started.set()
            async with asyncio.TaskGroup() as tasks:
                loops = [tasks.create_task(supervisor.run(), name="supervisor")]
                if self.link is not None:
                    loops.append(tasks.create_task(self._operator_loops(), name="operator"))
                tasks.create_task(self._http(), name="http")
                await self.stopping.wait()
                for task in loops:
                    task.cancel()
            # let a start or stop under way finish (bounded), so nothing is left half done
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    supervisor.settle_tasks(), timeout=supervisor.longest_stop() + 5
                )
            if self.drain:
                await supervisor.drain()
                if self.link is not None:
                    await _flush_reports(self.link)
        log.info("agent.stopped", drained=self.drain)

    # -- parts --------------------------------------------------------------------------

    async def _probe_runtime_version(self) -> None:
        version_of = getattr(self.driver, "version", None)
        if version_of is not None:
            with contextlib.suppress(ZeitworkError, OSError):
                self.runtime_version = str(await version_of())

    def _operator_link(self, client: OperatorClient) -> OperatorLink:
        settings = self.settings
        return OperatorLink(
            client=client,
            credentials=CredentialFile(self.data / "node.json"),
            join_token=settings.join_token.get_secret_value() if settings.join_token else None,
            node_id=settings.node_id,
            hostname=self.hostname,
            ip_address=self.ip_address,
            region_id=settings.region_id,
            runtime=self.choice.name,
            capacity=self.capacity,
            used=self._used,
            statuses=self._statuses,
            on_assignments=self._on_assignments,
            heartbeat_interval=settings.heartbeat_interval,
            resync_interval=settings.resync_interval,
            assignment_wait=settings.assignment_wait,
            subnet=settings.node_subnet or _stored_subnet(self.subnet_file),
            agent_url=settings.advertise_url or agent_url_for(self.ip_address, self.port),
            agent_token=self.own_token,
        )

    async def _node_network(self, peer_routes: list[PeerRoute]) -> NodeNetwork:
        settings = self.settings
        network = NodeNetwork(
            bridge=settings.bridge,
            subnet=await _node_subnet(settings, self.link, self.subnet_file),
            state_dir=self.data / "network",
            nft_table=settings.nft_table_name,
            peer_routes=peer_routes,
            nat=settings.egress_nat,
        )
        try:
            await network.setup()
        except ZeitworkError as exc:
            raise StartupError(f"network set-up failed: {exc.detail}") from exc
        return network

    async def _node_images(self, stack: AsyncExitStack) -> NodeImages:
        cache = await ImageCache.open(
            root=self.data / "images", max_bytes=self.settings.image_cache_mib * 1024 * 1024
        )
        stack.push_async_callback(cache.close)
        # from the platform registry when the operator has one, else from the operator
        images = NodeImages(cache=cache, operator=self.client, pull_from_registry=True)
        stack.push_async_callback(images.aclose)
        return images

    async def _recovered_supervisor(self, images: NodeImages) -> Supervisor:
        settings = self.settings
        supervisor = Supervisor(
            driver=self.driver,
            network=self.network,
            images=images,
            store=StateStore(root=self.data / "instances"),
            capacity=self.capacity,
            report=self._report,
            tuning=Tuning(
                max_restarts=settings.max_restarts,
                backoff_base=settings.restart_backoff_seconds,
                backoff_cap=settings.restart_backoff_max_seconds,
            ),
            stop_grace=settings.stop_grace_seconds,
        )
        if self.link is None:
            supervisor.assignments_known = True  # standalone: only the local API decides
        cleaned = await supervisor.recover()
        log.info(
            "agent.recovered",
            adopted=sum(1 for r in supervisor.records.values() if r.alive),
            cleaned=len(cleaned),
        )
        return supervisor

    def _api_server(self) -> QuietServer:
        assert self.supervisor is not None
        app = create_app(
            supervisor=self.supervisor,
            tokens=self._tokens,
            node_info=self._node_info,
            registry=new_registry(),
            readiness=[("operator", self._operator_ready)],
        )
        return QuietServer(
            uvicorn.Config(
                app,
                loop="none",
                http="h11",
                lifespan="off",
                access_log=False,
                log_config=None,
                server_header=False,
                timeout_graceful_shutdown=5,
            )
        )

    # -- callbacks the parts are given ----------------------------------------------------

    def _on_assignments(self, answer: Assignments) -> None:
        assert self.supervisor is not None  # the loops start after the supervisor
        self.supervisor.set_assignments(answer.instances)
        self.peers_wanted = [PeerRoute(subnet=p.subnet, via=p.ip_address) for p in answer.peers]
        self.peers_changed.set()

    def _used(self) -> Resources:
        return self.supervisor.used() if self.supervisor is not None else Resources(0, 0, 0)

    def _statuses(self) -> list[InstanceStatus]:
        return self.supervisor.statuses() if self.supervisor is not None else []

    def _report(self, instance_id: uuid.UUID, body: InstanceStatusReport) -> None:
        if self.link is not None:
            self.link.report(instance_id, body)

    def _tokens(self) -> list[str]:
        found = [self.own_token]
        if self.link is not None and self.link.node_token:
            found.append(self.link.node_token)
        if self.settings.agent_token is not None:
            found.append(self.settings.agent_token.get_secret_value())
        return found

    async def _node_info(self) -> dict[str, Any]:
        link, capacity, facts, network = self.link, self.capacity, self.facts, self.network
        return {
            "node_id": str(link.node_id) if link and link.node_id else None,
            "hostname": self.hostname,
            "ip_address": self.ip_address,
            "agent_url": link.agent_url if link is not None else None,
            "runtime": {"name": self.choice.name, "reason": self.choice.reason},
            "versions": {"zeitwork": __version__, "runtime": self.runtime_version},
            "capacity": {
                "vcpu": capacity.vcpu,
                "memory": capacity.memory_mib,
                "disk": capacity.disk_mib,
            },
            "host": {
                "cpus": facts.cpus,
                "memory": facts.memory_mib,
                "disk": facts.disk_mib,
            },
            "network": {
                "bridge": network.bridge,
                "subnet": network.subnet,
                "gateway": network.gateway,
            },
            "operator": None
            if link is None
            else {
                "url": self.settings.operator_url,
                "registered": link.node_token is not None,
                "last_heartbeat_ok": link.last_heartbeat_ok,
                "assignments_version": link.version,
                "last_error": link.last_error,
            },
        }

    async def _operator_ready(self) -> str | None:
        if self.link is None or self.link.node_token is not None:
            return None
        return self.link.last_error or "not registered yet"

    def _request_stop(self, signame: str) -> None:
        log.info("agent.stopping", signal=signame, drain=self.drain)
        self.stopping.set()
        self.server.should_exit = True

    # -- loops ----------------------------------------------------------------------------

    async def _http(self) -> None:
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            self.stopping.set()

    async def _peer_routes_loop(self) -> None:
        """Converge the routes to other nodes' subnets on what the operator sends."""
        while True:
            await self.peers_changed.wait()
            self.peers_changed.clear()
            if self.peers_wanted is None:
                continue
            try:
                await self.network.converge_peers(self.peers_wanted)
            except ZeitworkError as exc:
                # the periodic full resync delivers the peers again: retried then
                log.warning("network.peer_routes_failed", error=exc.detail)

    async def _operator_loops(self) -> None:
        link = self.link
        assert link is not None
        if not link.registered:
            await link.register()
        async with asyncio.TaskGroup() as inner:
            inner.create_task(link.heartbeat_loop(), name="heartbeat")
            inner.create_task(link.assignments_loop(), name="assignments")
            inner.create_task(link.reports_loop(), name="reports")
            inner.create_task(self._peer_routes_loop(), name="peer-routes")


def _stored_subnet(path: Path) -> str | None:
    """The subnet the operator gave this node before (kept in the data dir)."""
    try:
        value = json.loads(path.read_text())["subnet"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise StartupError(f"{path} is unreadable: {exc}; remove it to ask again") from exc
    return str(value) if value else None


async def _node_subnet(settings: AgentSettings, link: OperatorLink | None, stored: Path) -> str:
    """This node's instance subnet: ZEITWORK_NODE_SUBNET when set; else the one the operator
    gave before (data dir); else, with an operator, register first and take the one it
    allocates (kept in the data dir); else the default."""
    if settings.node_subnet:
        return settings.node_subnet
    if link is None:
        return DEFAULT_NODE_SUBNET
    if link.subnet is None:
        await link.register()  # retries until the operator answers
    if link.subnet is None:
        log.warning("network.no_subnet_from_operator", subnet=DEFAULT_NODE_SUBNET)
        return DEFAULT_NODE_SUBNET
    if _stored_subnet(stored) != link.subnet:
        atomic_write_json(stored, {"subnet": link.subnet})
        log.info("network.subnet_allocated", subnet=link.subnet)
    return link.subnet


async def _flush_reports(link: OperatorLink, seconds: float = 5.0) -> None:
    """After a drain, give the final reports a moment to reach the operator."""
    task = asyncio.create_task(link.reports_loop(), name="final-reports")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while link.pending_reports() and loop.time() < deadline:  # noqa: ASYNC110 (polling a count)
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run_agent(settings: AgentSettings, *, drain: bool = False) -> int:
    """Entry point of ``zeitwork node-agent``; returns the exit status."""
    configure_logging(
        service="node-agent", environment=settings.environment.value, level=settings.log_level.value
    )
    status = 0
    try:
        asyncio.run(serve(settings, drain=drain))
    except* ZeitworkError as group:
        for exc in group.exceptions:
            log.error("agent.failed", error=getattr(exc, "detail", str(exc)))
            print(f"zeitwork node-agent: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        status = 1
    except* OSError as os_group:
        for os_exc in os_group.exceptions:
            log.error("agent.failed", error=str(os_exc))
            print(f"zeitwork node-agent: {os_exc}", file=sys.stderr)
        status = 1
    return status
