"""What the release end-to-end tests and ``benchmarks/deploy.py`` share: versioned test
images, the data-plane services as subprocesses, the whole platform up (``data_plane``), a
steady client through the edge, and the release API calls with their waits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.lan import Lan
from tests.images import BuiltImage, Entry, app_entries
from tests.integration.agent.harness import AgentHost, preload
from tests.integration.agent.operator_process import OperatorProcess, stop_process

FAIL_CGI = (
    b"#!/bin/sh\n"
    b'echo "Status: 500 Internal Server Error"\n'
    b'echo "Content-Type: text/plain"\n'
    b"echo\necho broken\n"
)


def version_entries(version: str) -> list[Entry]:
    """The busybox app answering ``version`` on ``/`` and 500 on ``/cgi-bin/fail``."""
    entries = [e for e in app_entries() if e.path != "www/index.html"]
    entries += [
        Entry("www/index.html", f"{version}\n".encode()),
        Entry("www/cgi-bin", mode=0o755),
        Entry("www/cgi-bin/fail", FAIL_CGI, mode=0o755),
    ]
    return entries


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A data-plane service (``zeitwork load-balancer`` / ``edge-proxy``) as a subprocess."""

    name: str
    env: dict[str, str]
    log: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zeitwork", self.name],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not listening:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        stop_process(self.process)


def service_env(tmp_path: Path, **env: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LB_", "EDGE_", "PORT", "OPERATOR_", "ZEITWORK_", "DATABASE_URL"))
    }
    return {**base, "ZEITWORK_DATA_DIR": str(tmp_path), "LOG_LEVEL": "info", **env}


@contextlib.asynccontextmanager
async def proxies(
    root: Path,
    operator_url: str,
    proxy_token: str,
    *,
    lb_env: Mapping[str, str] | None = None,
    edge_env: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[Service, Service]]:
    """A load balancer and an edge proxy in front of it (one worker each, plain HTTP on
    127.0.0.1, data dirs and logs under ``root``), started and listening; stopped on exit
    (``lb_env``/``edge_env``: settings added to the services')."""
    lb_port, edge_port = free_port(), free_port()
    common = {"OPERATOR_URL": operator_url, "ZEITWORK_PROXY_TOKEN": proxy_token}
    lb = Service(
        "load-balancer",
        service_env(
            root / "lb",
            PORT=str(lb_port),
            HOST="127.0.0.1",
            LB_ADMIN_PORT=str(free_port()),
            LB_WORKERS="1",
            **common,
            **(lb_env or {}),
        ),
        root / "lb.log",
        lb_port,
    )
    edge = Service(
        "edge-proxy",
        service_env(
            root / "edge",
            PORT=str(edge_port),
            HOST="127.0.0.1",
            EDGE_HTTPS_PORT=str(free_port()),
            EDGE_ADMIN_PORT=str(free_port()),
            EDGE_WORKERS="1",
            EDGE_TLS_MODE="internal",
            EDGE_HTTPS_REDIRECT="false",
            LOAD_BALANCER_URL=f"http://127.0.0.1:{lb_port}",
            **common,
            **(edge_env or {}),
        ),
        root / "edge.log",
        edge_port,
    )
    started: list[Service] = []
    try:
        for service, data in ((lb, "lb"), (edge, "edge")):
            (root / data).mkdir(exist_ok=True)
            started.append(service)
            service.start()
        for service in started:
            await service.wait_listening()
        yield lb, edge
    finally:
        for service in reversed(started):
            service.stop()


async def start_two_agents(
    lan: Lan,
    hosts: Callable[..., AgentHost],
    operator_url: str,
    join: str,
    env: dict[str, str],
    *,
    preload_image: BuiltImage | None = None,
) -> tuple[list[str], list[AgentHost]]:
    """Two agent "hosts" on the LAN joining the operator with ``join``; started and ready."""
    names = [lan.add_host(), lan.add_host()]
    agents = []
    for index, name in enumerate(names):
        host = hosts(
            netns=name,
            subnet=None,
            extra_env={
                "OPERATOR_URL": operator_url,
                "ZEITWORK_JOIN_TOKEN": join,
                "NODE_IP": lan.address(index),
                "NODE_HOSTNAME": f"host-{index}-{lan.suffix}",
                **env,
            },
        )
        if preload_image is not None:
            await preload(host.data_dir, preload_image)
        host.start()
        agents.append(host)
    for host in agents:
        await host.wait_ready()
    return names, agents


@dataclass
class DataPlane:
    """The platform of the release tests, up: a real operator, two node agents on network
    namespace "hosts" running runc instances, one app with a domain bound, and a load
    balancer and an edge proxy (one worker each) serving it."""

    operator: OperatorProcess
    agents: list[AgentHost]
    app: str
    domain: str
    lb: Service
    edge: Service


@contextlib.asynccontextmanager
async def data_plane(
    lan: Lan,
    hosts: Callable[..., AgentHost],
    database_url: str,
    tmp_path: Path,
    *,
    lb_env: Mapping[str, str] | None = None,
    edge_env: Mapping[str, str] | None = None,
) -> AsyncIterator[DataPlane]:
    """Start the platform as ``test_releases`` does (``lb_env``/``edge_env``: settings
    added to the services'); on exit stop the edge, the balancer and the operator (the
    agents are the ``hosts`` factory's to clean up)."""
    operator = OperatorProcess(
        database_url=database_url,
        root=tmp_path / "operator",
        extra_env={
            "ZEITWORK_INSTANCE_NETWORK": f"10.{random.randint(0, 200)}.0.0/16",
            "ZEITWORK_NODE_HEARTBEAT_TIMEOUT": "5",
        },
    )
    operator.start()
    try:
        await operator.wait_ready()
        join = await operator.join_token()
        _names, agents = await start_two_agents(
            lan, hosts, operator.url(lan.gateway), join, {"ZEITWORK_HEARTBEAT_INTERVAL": "1"}
        )
        async with operator.client() as api:
            nodes = (await api.get("/api/v1/nodes")).json()
            assert len(nodes) == 2, nodes
            for node in nodes:  # the root namespace reaches each host's instances
                lan.route_from_root(node["subnet"], node["ip_address"])
            app = f"rel-{uuid.uuid4().hex[:6]}"
            domain = f"{app}.test"
            created = await api.post("/api/v1/projects", json={"name": app, "slug": app})
            assert created.status_code == 201, created.text
            bound = await api.post(
                "/api/v1/domains",
                json={
                    "name": domain,
                    "project_id": created.json()["id"],
                    "environment": "production",
                },
            )
            assert bound.status_code == 201, bound.text
            token = await api.post("/api/v1/tokens", json={"scope": "proxy", "name": "e2e"})
            proxy_token = token.json()["token"]
        async with proxies(
            tmp_path,
            operator.url(),
            proxy_token,
            lb_env={"LB_TRUSTED_PROXIES": "127.0.0.1/32", **(lb_env or {})},
            edge_env=edge_env,
        ) as (lb, edge):
            yield DataPlane(operator, agents, app, domain, lb, edge)
    finally:
        operator.stop()


@dataclass
class Load:
    """About ``rate`` requests/s through the edge until stopped; every answer recorded."""

    port: int
    host: str
    rate: float = 60.0
    answers: list[tuple[float, str, str]] = field(default_factory=list)
    """(time, how, version or error)"""
    failures: list[tuple[float, str, str]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _keepalive(self) -> None:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Host": self.host},
            timeout=10,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        ) as client:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    response = await client.get("/")
                    self._record("keep-alive", response.status_code, response.text)
                except httpx.HTTPError as exc:
                    self._fail("keep-alive", f"{type(exc).__name__}: {exc}")
                await self._pace(began)

    async def _new_connections(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                status, body = await self.one_request()
                self._record("new-connection", status, body)
            except (OSError, TimeoutError, ValueError, IndexError) as exc:
                self._fail("new-connection", f"{type(exc).__name__}: {exc}")
            await self._pace(began)

    async def one_request(self) -> tuple[int, str]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
        try:
            writer.write(
                f"GET / HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body.decode(errors="replace")

    async def _pace(self, began: float) -> None:
        wait = 2.0 / self.rate - (time.monotonic() - began)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, wait))

    def _record(self, how: str, status: int, body: str) -> None:
        if status != 200:
            self._fail(how, f"{status}: {body[:200]}")
            return
        self.answers.append((time.monotonic(), how, body.strip()))

    def _fail(self, how: str, what: str) -> None:
        self.failures.append((time.monotonic(), how, what))

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keepalive()),
            asyncio.create_task(self._new_connections()),
        ]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def versions_since(self, moment: float) -> set[str]:
        return {version for at, _how, version in self.answers if at >= moment}

    def count_since(self, moment: float) -> int:
        return sum(1 for at, _how, _v in self.answers if at >= moment)


HEALTH = {"type": "http", "path": "/health", "interval": 0.5, "timeout": 1, "grace_period": 0}
STRATEGY = {
    "type": "rolling",
    "min_healthy_time": 1,
    "drain_timeout": 2,
    "stop_timeout": 1,
    "healthy_deadline": 12,
    "progress_deadline": 60,
}


async def deploy(api: httpx.AsyncClient, app: str, image: str, **body: Any) -> dict[str, Any]:
    payload = {
        "image": image,
        "port": 8080,
        "resources": {"vcpu": 0.25, "memory": 64},
        "health_check": HEALTH,
        "strategy": STRATEGY,
        **body,
    }
    response = await api.post(f"/api/v1/projects/{app}/releases", json=payload)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def settled(
    api: httpx.AsyncClient, app: str, version: int, *, timeout: float = 60.0
) -> dict[str, Any]:
    """The release once its rollout ended (active, failed or superseded)."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = (await api.get(f"/api/v1/projects/{app}/releases/{version}")).json()
        if body.get("state") in ("active", "failed", "superseded"):
            return body
        await asyncio.sleep(0.2)
    raise AssertionError(f"release v{version} did not settle: {body}")


async def only_version_running(
    api: httpx.AsyncClient, app: str, version: int, replicas: int, *, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until exactly ``replicas`` instances run, all of release v``version``, and no
    other instance of the app is left running."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = (await api.get(f"/api/v1/projects/{app}/status")).json()
        live = [i for i in status["instances"] if i["state"] not in ("stopped", "terminated")]
        if len(live) == replicas and all(
            i["version"] == version and i["state"] == "running" and i["serving"] for i in live
        ):
            return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"expected {replicas} x v{version} only: {status}")


async def answers_only(load: Load, expected: str, *, seconds: float = 1.5) -> None:
    mark = time.monotonic()
    await asyncio.sleep(seconds)  # sample the running load for a while
    assert load.count_since(mark) >= 20, load.answers[-5:]
    assert load.versions_since(mark) == {expected}
    assert load.failures == [], load.failures[:20]
