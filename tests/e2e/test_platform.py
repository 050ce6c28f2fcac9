"""The whole platform on one machine through ``zeitwork dev`` (a real subprocess): operator
with its embedded PostgreSQL, node agent with runc, load balancer, edge proxy.

Imports the busybox test image, deploys it behind a domain, and gets 200 through the edge
(plain HTTP with a Host header, HTTPS with SNI trusting the internal CA) and through the load
balancer; terminates the instance through the API and sees the route go (503); Ctrl-C
(SIGINT) stops every child, and no container, network namespace or process is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.images import INDEX_HTML, BuiltImage

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]

PORT_NAMES = (
    "operator",
    "agent",
    "lb",
    "http",
    "https",
    "lb-admin",
    "edge-admin",
)


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Platform:
    process: asyncio.subprocess.Process
    data_dir: Path
    ports: dict[str, int]
    log: Path
    run_dir: Path
    bridge: str

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def _until(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, platform: Platform
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if platform.process.returncode is not None:
            pytest.fail(
                f"zeitwork dev exited while waiting for {what}:\n{platform.output()[-4000:]}"
            )
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{platform.output()[-4000:]}")
        await asyncio.sleep(0.2)  # poll interval of a probe with a deadline


def _zeitwork_processes(data_dir: Path) -> list[int]:
    """Processes (not zombies) whose environment names our data dir: the dev children."""
    marker = f"ZEITWORK_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "stat").read_text().split(") ", 1)[1].startswith("Z"):
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _remove_host_state(bridge: str, table: str, cgroup_parent: str) -> None:
    subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True, check=False)
    cgroups = Path("/sys/fs/cgroup")
    for parent in [cgroups / cgroup_parent, *cgroups.glob(f"*/{cgroup_parent}")]:
        with contextlib.suppress(OSError):
            parent.rmdir()  # empty once the containers are gone


@pytest.fixture
async def platform(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Platform]:
    """``zeitwork dev`` as a subprocess (extra arguments by indirect parametrisation)."""
    extra: tuple[str, ...] = getattr(request, "param", ())
    suffix = uuid.uuid4().hex[:6]
    bridge, table, cgroup_parent = f"zwp{suffix}", f"zwp{suffix}", f"zwp{suffix}"
    run_dir = Path("/run") / f"zwp{suffix}"
    data_dir = tmp_path / "data"
    ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
    subnet = f"10.{random.randint(120, 250)}.{random.randint(0, 255)}.0/24"
    env = {
        **os.environ,
        "ZEITWORK_BRIDGE": bridge,
        "ZEITWORK_NFT_TABLE": table,
        "ZEITWORK_CGROUP_PARENT": cgroup_parent,
        "ZEITWORK_RUN_DIR": str(run_dir),
        "ZEITWORK_NODE_SUBNET": subnet,
        "ZEITWORK_STOP_GRACE": "2",  # busybox httpd as PID 1 ignores SIGTERM
        "LB_HEALTH_INTERVAL": "0.5",
        "ZEITWORK_HEARTBEAT_INTERVAL": "2",
    }
    env.pop("DATABASE_URL", None)
    env.pop("ZEITWORK_ADMIN_TOKEN", None)
    argv = [sys.executable, "-m", "zeitwork", "dev", "--data-dir", str(data_dir)]
    for name, port in ports.items():
        flag = {"http": "--http-port", "https": "--https-port"}.get(name, f"--{name}-port")
        argv += [flag, str(port)]
    argv += extra
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    made = Platform(
        process=process, data_dir=data_dir, ports=ports, log=log, run_dir=run_dir, bridge=bridge
    )
    try:
        yield made
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        for pid in _zeitwork_processes(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        runc = shutil.which("runc") or "runc"
        listed = subprocess.run(
            [runc, "--root", str(run_dir / "runc"), "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        for container in listed.stdout.split():
            subprocess.run(
                [runc, "--root", str(run_dir / "runc"), "delete", "--force", container],
                capture_output=True,
                check=False,
            )
        _remove_host_state(bridge, table, cgroup_parent)
        shutil.rmtree(run_dir, ignore_errors=True)


async def _cli(env: dict[str, str], *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zeitwork",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, (args, out, err)
    return out.decode()


async def _https_get(port: int, host: str, ca_file: Path) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(ca_file))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host), 5
    )
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def _stop_and_check(p: Platform) -> None:
    """Ctrl-C: every child stops in order, nothing of the run is left."""
    children = _zeitwork_processes(p.data_dir)
    assert len(children) >= 4, children  # operator, agent, LB, edge (and workers)

    p.process.send_signal(signal.SIGINT)  # Ctrl-C
    code = await asyncio.wait_for(p.process.wait(), 90)
    output = p.output()
    assert code == 0, output[-4000:]
    order = [output.index(f"dev: stopping {name}") for name in ("edge-proxy", "load-balancer")]
    order += [output.index(f"dev: stopping {name}") for name in ("node-agent", "operator")]
    assert order == sorted(order)
    assert "dev: stopped" in output
    assert _zeitwork_processes(p.data_dir) == []
    assert not any((p.data_dir / "agent" / "network" / "netns").glob("*"))
    containers = subprocess.run(
        ["runc", "--root", str(p.run_dir / "runc"), "list", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert containers.stdout.split() == []
    veths = subprocess.run(
        ["ip", "-o", "link", "show", "master", p.bridge],
        capture_output=True,
        text=True,
        check=False,
    )
    assert veths.stdout.strip() == ""


async def test_dev_platform_serves_an_app_and_stops_cleanly(
    platform: Platform, busybox_image: BuiltImage
) -> None:
    p = platform

    async def started() -> bool:
        return "Zeitwork is running" in p.output()

    await _until(started, within=120, what="the platform to start", platform=p)
    domain = f"app-{uuid.uuid4().hex[:8]}.test"
    headers = {"Authorization": f"Bearer {p.token}"}
    async with (
        httpx.AsyncClient(base_url=p.url("operator"), headers=headers, timeout=30) as api,
        httpx.AsyncClient(timeout=5) as web,
    ):
        nodes = (await api.get("/api/v1/nodes")).json()
        assert [n["state"] for n in nodes] == ["ready"]
        assert nodes[0]["runtime"] == "oci"

        # the user verbs, as a user types them
        cli_env = {
            **os.environ,
            "OPERATOR_URL": p.url("operator"),
            "ZEITWORK_DATA_DIR": str(p.data_dir),
        }
        imported = await _cli(
            cli_env, "images", "import", str(busybox_image.path), "--name", "busybox-e2e"
        )
        assert busybox_image.digest in imported
        image_id = imported.splitlines()[1].split()[0]
        deployed = await _cli(
            cli_env,
            "deploy",
            "--image",
            image_id,
            "--port",
            "8080",
            "--memory",
            "64",
            "--project",
            f"e2e-{domain.split('.', maxsplit=1)[0]}",
            "--domain",
            domain,
        )
        instance_ids = [
            line.split()[1] for line in deployed.splitlines() if line.strip().startswith("instance")
        ]
        assert len(instance_ids) == 1, deployed
        assert f"domain {domain} -> deployment" in deployed
        assert f"publish TXT _zeitwork.{domain} " in deployed  # how to verify it for ACME
        listed_domains = await _cli(cli_env, "domains", "ls")
        (domain_row,) = [line for line in listed_domains.splitlines() if line.startswith(domain)]
        assert " no " in domain_row and f"_zeitwork.{domain} " in domain_row
        instance_id = instance_ids[0]

        async def running() -> bool:
            got = (await api.get(f"/api/v1/instances/{instance_id}")).json()
            assert got["state"] not in ("failed", "terminated"), got
            return bool(got["state"] == "running")

        await _until(running, within=60, what="the instance to run", platform=p)

        async def served(url: str) -> bool:
            with contextlib.suppress(httpx.HTTPError):
                answer = await web.get(url + "/", headers={"Host": domain})
                return answer.status_code == 200 and answer.content == INDEX_HTML
            return False

        await _until(lambda: served(p.url("http")), within=30, what="the edge", platform=p)
        await _until(lambda: served(p.url("lb")), within=10, what="the LB", platform=p)
        edge = await web.get(p.url("http") + "/", headers={"Host": domain})
        assert edge.headers["x-content-type-options"] == "nosniff"  # the edge's policy ran

        # the internal CA the edge shares through the operator, as the CLI prints it
        ca_file = p.data_dir.parent / "zeitwork-ca.crt"
        ca_file.write_text(await _cli(cli_env, "domains", "ca"))
        assert ca_file.read_text() == (p.data_dir / "edge" / "ca" / "ca.crt").read_text()

        async def served_tls() -> bool:
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError, IndexError):
                status, body = await _https_get(p.ports["https"], domain, ca_file)
                return status == 200 and body.endswith(INDEX_HTML)
            return False

        await _until(served_tls, within=20, what="HTTPS with SNI", platform=p)

        # a per-domain rate limit set on the operator reaches the edge through the route table
        [bound] = [d for d in (await api.get("/api/v1/domains")).json() if d["name"] == domain]
        limit_url = f"/api/v1/domains/{bound['id']}/rate-limit"
        r = await api.put(limit_url, json={"rate_limit_rps": 0.2, "rate_limit_burst": 2})
        assert r.status_code == 200, r.text

        async def limited() -> bool:
            answer = await web.get(p.url("http") + "/", headers={"Host": domain})
            if answer.status_code != 429:
                return False
            assert "q=2" in answer.headers["ratelimit-policy"], answer.headers
            return True

        await _until(limited, within=20, what="the domain's rate limit at the edge", platform=p)
        r = await api.put(limit_url, json={"rate_limit_rps": None})
        assert r.status_code == 200, r.text
        await _until(lambda: served(p.url("http")), within=20, what="the limit lifted", platform=p)

        # a path rate limit (set with the CLI): /login limited at the edge, the rest of the
        # host not
        said = await _cli(
            cli_env, "domains", "limit", domain, "--path", "/login", "--rps", "0.2", "--burst", "2"
        )
        assert "/login 0.2/s (burst 2)" in said, said
        listed = await _cli(cli_env, "domains", "ls")
        assert "/login 0.2/s (burst 2)" in listed, listed

        async def login_limited() -> bool:
            answer = await web.get(p.url("http") + "/login", headers={"Host": domain})
            return answer.status_code == 429

        await _until(login_limited, within=20, what="the path's rate limit", platform=p)
        assert await served(p.url("http"))  # "/" keeps its own (global) limit
        said = await _cli(cli_env, "domains", "limit", domain, "--path", "/login", "--clear")
        assert said.strip().endswith(": -"), said

        # a per-domain CORS policy set on the operator (with the CLI): the edge answers the
        # preflight
        origin = "https://ui.example.test"
        said = await _cli(cli_env, "domains", "policy", domain, "--cors-origin", origin)
        assert origin in said, said

        async def preflight() -> bool:
            answer = await web.options(
                p.url("http") + "/",
                headers={
                    "Host": domain,
                    "Origin": origin,
                    "Access-Control-Request-Method": "PUT",
                },
            )
            return answer.headers.get("access-control-allow-origin") == origin

        await _until(preflight, within=20, what="the domain's CORS policy at the edge", platform=p)
        stranger = await web.get(
            p.url("http") + "/", headers={"Host": domain, "Origin": "https://evil.test"}
        )
        assert "access-control-allow-origin" not in stranger.headers

        listing = await _cli(cli_env, "instances", "ls")
        (row,) = [line for line in listing.splitlines() if line.startswith(instance_id)]
        assert " running " in row and ":8080" in row
        assert image_id in await _cli(cli_env, "images", "ls")

        # stop the instance through the API (`zeitwork instances rm` = DELETE): the route
        # loses its only backend
        stopped = await _cli(cli_env, "instances", "rm", instance_id)
        assert f"instance {instance_id}: desired terminated" in stopped

        async def route_gone() -> bool:
            answer = await web.get(p.url("http") + "/", headers={"Host": domain})
            return answer.status_code == 503

        await _until(route_gone, within=30, what="the route to go", platform=p)

        async def destroyed() -> bool:
            got = (await api.get(f"/api/v1/instances/{instance_id}")).json()
            return bool(got["state"] in ("stopped", "terminated"))

        await _until(destroyed, within=30, what="the instance to stop", platform=p)
        # the join token of this run was revoked once the agent held its node credential
        joins = (await api.get("/api/v1/tokens", params={"scope": "join"})).json()
        assert joins == []
        listed = await _cli(cli_env, "nodes", "ls")
        assert " ready " in listed and " oci " in listed

    await _stop_and_check(p)


@pytest.mark.parametrize("platform", [("--demo",)], indirect=True)
async def test_dev_demo_serves_the_demo_page(platform: Platform) -> None:
    p = platform

    async def live() -> bool:
        return "The demo app is live" in p.output()

    await _until(live, within=120, what="the demo", platform=p)
    assert f"curl -H 'Host: demo.localhost' {p.url('http')}/" in p.output()
    async with httpx.AsyncClient(timeout=5) as web:
        page = await web.get(p.url("http") + "/", headers={"Host": "demo.localhost"})
    assert page.status_code == 200
    assert b"Hello from Zeitwork" in page.content
    status, body = await _https_get(
        p.ports["https"], "demo.localhost", p.data_dir / "edge" / "ca" / "ca.crt"
    )
    assert status == 200 and b"Hello from Zeitwork" in body
    await _stop_and_check(p)
