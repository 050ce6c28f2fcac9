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
import signal
import ssl
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.dev_platform import Platform, cli, until, zeitwork_processes
from tests.images import INDEX_HTML, BuiltImage

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


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
    children = zeitwork_processes(p.data_dir)
    assert len(children) >= 4, children  # operator, agent, LB, edge (and workers)

    p.process.send_signal(signal.SIGINT)  # Ctrl-C
    code = await asyncio.wait_for(p.process.wait(), 90)
    output = p.output()
    assert code == 0, output[-4000:]
    order = [output.index(f"dev: stopping {name}") for name in ("edge-proxy", "load-balancer")]
    order += [output.index(f"dev: stopping {name}") for name in ("node-agent", "operator")]
    assert order == sorted(order)
    assert "dev: stopped" in output
    assert zeitwork_processes(p.data_dir) == []
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

    await until(started, within=120, what="the platform to start", platform=p)
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
        imported = await cli(
            cli_env, "images", "import", str(busybox_image.path), "--name", "busybox-e2e"
        )
        assert busybox_image.digest in imported
        image_id = imported.splitlines()[1].split()[0]
        deployed = await cli(
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
        app = f"e2e-{domain.split('.', maxsplit=1)[0]}"
        assert f"domain {domain} -> {app} (production)" in deployed, deployed
        assert "v1 is the current release" in deployed, deployed  # the CLI followed it
        status = (await api.get(f"/api/v1/projects/{app}/status")).json()
        instance_ids = [i["id"] for i in status["instances"]]
        assert len(instance_ids) == 1, status
        assert status["current_release"]["health_check"]["type"] == "tcp"  # no options: tcp
        assert f"publish TXT _zeitwork.{domain} " in deployed  # how to verify it for ACME
        listed_domains = await cli(cli_env, "domains", "ls")
        (domain_row,) = [line for line in listed_domains.splitlines() if line.startswith(domain)]
        assert " no " in domain_row and f"_zeitwork.{domain} " in domain_row
        instance_id = instance_ids[0]

        async def running() -> bool:
            got = (await api.get(f"/api/v1/instances/{instance_id}")).json()
            assert got["state"] not in ("failed", "terminated"), got
            return bool(got["state"] == "running")

        await until(running, within=60, what="the instance to run", platform=p)

        async def served(url: str) -> bool:
            with contextlib.suppress(httpx.HTTPError):
                answer = await web.get(url + "/", headers={"Host": domain})
                return answer.status_code == 200 and answer.content == INDEX_HTML
            return False

        await until(lambda: served(p.url("http")), within=30, what="the edge", platform=p)
        await until(lambda: served(p.url("lb")), within=10, what="the LB", platform=p)
        edge = await web.get(p.url("http") + "/", headers={"Host": domain})
        assert edge.headers["x-content-type-options"] == "nosniff"  # the edge's policy ran

        # the internal CA the edge shares through the operator, as the CLI prints it
        ca_file = p.data_dir.parent / "zeitwork-ca.crt"
        ca_file.write_text(await cli(cli_env, "domains", "ca"))
        assert ca_file.read_text() == (p.data_dir / "edge" / "ca" / "ca.crt").read_text()

        async def served_tls() -> bool:
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError, IndexError):
                status, body = await _https_get(p.ports["https"], domain, ca_file)
                return status == 200 and body.endswith(INDEX_HTML)
            return False

        await until(served_tls, within=20, what="HTTPS with SNI", platform=p)

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

        await until(limited, within=20, what="the domain's rate limit at the edge", platform=p)
        r = await api.put(limit_url, json={"rate_limit_rps": None})
        assert r.status_code == 200, r.text
        await until(lambda: served(p.url("http")), within=20, what="the limit lifted", platform=p)

        # a path rate limit (set with the CLI): /login limited at the edge, the rest of the
        # host not
        said = await cli(
            cli_env, "domains", "limit", domain, "--path", "/login", "--rps", "0.2", "--burst", "2"
        )
        assert "/login 0.2/s (burst 2)" in said, said
        listed = await cli(cli_env, "domains", "ls")
        assert "/login 0.2/s (burst 2)" in listed, listed

        async def login_limited() -> bool:
            answer = await web.get(p.url("http") + "/login", headers={"Host": domain})
            return answer.status_code == 429

        await until(login_limited, within=20, what="the path's rate limit", platform=p)
        assert await served(p.url("http"))  # "/" keeps its own (global) limit
        said = await cli(cli_env, "domains", "limit", domain, "--path", "/login", "--clear")
        assert said.strip().endswith(": -"), said

        # a per-domain CORS policy set on the operator (with the CLI): the edge answers the
        # preflight
        origin = "https://ui.example.test"
        said = await cli(cli_env, "domains", "policy", domain, "--cors-origin", origin)
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

        await until(preflight, within=20, what="the domain's CORS policy at the edge", platform=p)
        stranger = await web.get(
            p.url("http") + "/", headers={"Host": domain, "Origin": "https://evil.test"}
        )
        assert "access-control-allow-origin" not in stranger.headers

        listing = await cli(cli_env, "instances", "ls")
        (row,) = [line for line in listing.splitlines() if line.startswith(instance_id)]
        assert " running " in row and ":8080" in row
        assert image_id in await cli(cli_env, "images", "ls")

        # remove the instance through the API (`zeitwork instances rm` = DELETE): the
        # release keeps its replica count, so a replacement takes its place
        stopped = await cli(cli_env, "instances", "rm", instance_id)
        assert f"instance {instance_id}: desired terminated" in stopped

        async def replaced() -> bool:
            now = (await api.get(f"/api/v1/projects/{app}/status")).json()
            serving = [i for i in now["instances"] if i["serving"] and i["state"] == "running"]
            return [i["id"] for i in serving] not in ([], [instance_id])

        await until(replaced, within=60, what="a replacement instance", platform=p)
        await until(lambda: served(p.url("http")), within=30, what="the replacement", platform=p)

        async def destroyed() -> bool:
            got = (await api.get(f"/api/v1/instances/{instance_id}")).json()
            return bool(got["state"] in ("stopped", "terminated"))

        await until(destroyed, within=30, what="the instance to stop", platform=p)

        # scaled to zero, the route has no backend left
        scaled = await cli(cli_env, "scale", app, "0")
        assert "0" in scaled, scaled

        async def route_gone() -> bool:
            answer = await web.get(p.url("http") + "/", headers={"Host": domain})
            return answer.status_code == 503

        await until(route_gone, within=30, what="the route to go", platform=p)
        # the join token of this run was revoked once the agent held its node credential
        joins = (await api.get("/api/v1/tokens", params={"scope": "join"})).json()
        assert joins == []
        listed = await cli(cli_env, "nodes", "ls")
        assert " ready " in listed and " oci " in listed

    await _stop_and_check(p)


@pytest.mark.parametrize("platform", [("--demo",)], indirect=True)
async def test_dev_demo_serves_the_demo_page(platform: Platform) -> None:
    p = platform

    async def live() -> bool:
        return "The demo app is live" in p.output()

    await until(live, within=120, what="the demo", platform=p)
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
