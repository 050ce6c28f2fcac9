"""The app verbs of ``zeitwork`` run as real processes against a real operator (its app on a
real socket, the real PostgreSQL), while the test drives the reconcile loop and fake agents
that report state and health: deploy followed to the end, a failing release's cause and exit
status, rollback, releases, status, env, scale, events, node drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import heartbeat_body
from tests.integration.operator.live_server import live_operator
from tests.integration.operator.releases_kit import Platform, bind, platform
from zeitwork.observability import new_registry
from zeitwork.operator.app import create_app
from zeitwork.operator.db import events

pytestmark = pytest.mark.slow

HOST = "app.example.com"


def broken_when_asked(instance: dict[str, Any]) -> str:
    """Instances of a release deployed with ``BROKEN=1`` exit at start."""
    env = instance.get("environment_variables") or {}
    return "exit" if env.get("BROKEN") == "1" else "healthy"


@dataclass
class Cli:
    p: Platform
    url: str
    data_dir: Path

    def env(self) -> dict[str, str]:
        kept = {
            k: v
            for k, v in os.environ.items()
            if k not in ("OPERATOR_URL", "ZEITWORK_TOKEN", "ZEITWORK_DATA_DIR")
        }
        return kept | {
            "OPERATOR_URL": self.url,
            "ZEITWORK_TOKEN": self.p.op.admin_token,
            "ZEITWORK_DATA_DIR": str(self.data_dir),
        }

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zeitwork",
            *args,
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(
        self, *args: str, drive: bool = True, deadline: float = 60.0
    ) -> tuple[int, str, str]:
        """Run ``zeitwork ARGS`` to its end; with ``drive``, step the platform meanwhile
        (the reconcile loop, the agents' syncs and heartbeats)."""
        proc = await self.start(*args)
        done = asyncio.ensure_future(proc.communicate())
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        try:
            while not done.done():
                assert loop.time() < until, f"zeitwork {' '.join(args)} did not end"
                if drive:
                    await self.p.step()
                    await self.heartbeats()
                await asyncio.wait({done}, timeout=0.1)
        finally:
            if not done.done():
                proc.kill()
                await done
        out, err = done.result()
        assert proc.returncode is not None
        text_out, text_err = out.decode(), err.decode()
        assert "Traceback" not in text_err, text_err
        return proc.returncode, text_out, text_err

    async def heartbeats(self) -> None:
        """The fake agents' heartbeats, so their nodes stay ready however long a test runs."""
        for agent in self.p.agents:
            r = await self.p.op.client.post(
                f"/api/v1/nodes/{agent.node_id}/heartbeat",
                headers=self.p.op.headers(agent.token),
                json=heartbeat_body(),
            )
            assert r.status_code == 204, r.text


@pytest.fixture
async def cli(operator: Operator, tmp_path: Path) -> AsyncIterator[Cli]:
    p = await platform(operator)
    for agent in p.agents:
        agent.verdict = broken_when_asked
    async with live_operator(operator) as url:
        yield Cli(p=p, url=url, data_dir=tmp_path)


async def _serving_v1(cli: Cli) -> None:
    """v1 deployed through the API with quick rollout settings (min_healthy_time 0,
    drain_timeout 0): the CLI's deploys keep them, as they keep the current strategy."""
    await cli.p.deploy(replicas=2)
    await bind(cli.p, HOST)

    async def v1_active() -> bool:
        return bool((await cli.p.release(1))["state"] == "active")

    await cli.p.converge(v1_active)


async def test_deploy_fail_rollback_releases_status(cli: Cli) -> None:
    await _serving_v1(cli)
    slug = cli.p.project["slug"]

    code, out, err = await cli.run("deploy", "--app", slug, "--image", cli.p.image)
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0] == f"v2 of {slug} (production): deploying"
    for phase in ("placed on node", "healthy", "serving", "draining", "stopped"):
        assert any(phase in line for line in lines), out
    assert "(v1) draining" in out and "(v2) serving" in out
    assert lines[-1].startswith("v2 is the current release (")
    assert [v for v, *_ in await cli.p.live()] == [2, 2]

    code, out, err = await cli.run(
        "deploy", "--app", slug, "--image", cli.p.image, "--env", "BROKEN=1"
    )
    assert code == 1, (out, err)
    assert err.startswith("zeitwork: v3 failed: "), err
    assert "exited with code 3" in err
    assert "exited" in out  # the instance's own event, followed live

    code, out, err = await cli.run("rollback", slug)
    assert code == 0, (out, err)
    assert out.splitlines()[-1].startswith("v4 is the current release (")

    code, out, _ = await cli.run("releases", slug, drive=False)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:3] == ["VERSION", "IMAGE", "STATE"]
    assert [r[0] for r in rows[1:]] == ["v4", "v3", "v2", "v1"]
    assert rows[1][2:4] == ["active", "(current)"]
    assert rows[2][2] == "failed" and "exited with code 3" in out.splitlines()[2]
    assert "rollback of v1" in out.splitlines()[1]  # the good one before v2

    code, out, _ = await cli.run("status", slug, drive=False)
    assert code == 0
    assert f"app {slug} (production): 2 replica(s) desired" in out
    assert "current release v4" in out
    assert f"domain {HOST}: http://{HOST}/" in out
    code, out, _ = await cli.run("status", slug, "--json", drive=False)
    status = json.loads(out)
    assert status["current_release"]["version"] == 4
    assert len(status["instances"]) == 2
    assert all(i["health"] == "healthy" and i["serving"] for i in status["instances"])


async def test_env_scale_events_nodes_and_refusals(cli: Cli) -> None:
    await _serving_v1(cli)
    slug = cli.p.project["slug"]

    code, out, err = await cli.run("env", "set", slug, "MODE=prod", "LEVEL=2")
    assert code == 0, (out, err)
    assert out.splitlines()[-1].startswith("v2 is the current release (")
    code, out, err = await cli.run("env", "set", slug, "API_KEY=s3cret-value", "--secret")
    assert code == 0, (out, err)
    code, out, _ = await cli.run("env", "unset", slug, "LEVEL")
    assert code == 0
    code, out, _ = await cli.run("env", "ls", slug, drive=False)
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "VALUE"],
        ["API_KEY", "(secret)"],
        ["MODE", "prod"],
    ]
    code, out, _ = await cli.run("env", "ls", slug, "--json", drive=False)
    assert "s3cret-value" not in out
    assert json.loads(out)["secret_names"] == ["API_KEY"]

    code, out, _ = await cli.run("scale", slug, "1")
    assert code == 0
    assert out == f"{slug} (production): 1 replica(s) of v4\n"

    code, out, _ = await cli.run("events", slug, drive=False)
    assert code == 0
    assert "release.created: v4 created (config)" in out
    assert "rollout.succeeded: v4 is current" in out
    code, out, _ = await cli.run(
        "events", slug, "--json", "--kind", "rollout.", "--limit", "2", drive=False
    )
    kinds = [e["kind"] for e in json.loads(out)]
    assert len(kinds) == 2 and all(k.startswith("rollout.") for k in kinds)

    code, out, _ = await cli.run("apps", drive=False)
    assert code == 0
    assert out.splitlines()[1].split()[:4] == [slug, "v4", "active", "1/1"]

    agent = cli.p.agents[0]
    nodes = await cli.p.op.sql("SELECT hostname FROM nodes WHERE id = %s", (agent.node_id,))
    hostname = nodes[0][0]
    code, out, err = await cli.run("nodes", "drain", hostname)
    assert code == 0, err
    assert out == f"node {hostname} ({agent.node_id}): draining\n"
    code, out, err = await cli.run("nodes", "undrain", agent.node_id[:8])
    assert code == 0, err
    assert out.endswith(": ready\n")

    code, out, err = await cli.run("status", "no-such-app", drive=False)
    assert code == 1
    assert err.startswith("zeitwork: GET /api/v1/projects/no-such-app/status: ")
    assert len(err.splitlines()) == 1
    code, out, err = await cli.run("deploy", "--app", slug, "--image", "no-such-image")
    assert code == 1
    assert len(err.splitlines()) == 1 and "no-such-image" in err, err


@contextlib.asynccontextmanager
async def _serving_on(op: Operator, port: int) -> AsyncIterator[int]:
    """The operator app on 127.0.0.1:``port`` (0: any) until the block ends; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(deps=op.deps, registry=new_registry()),
            loop="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=1,
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not server.started:
            assert asyncio.get_running_loop().time() < deadline, "operator did not start"
            await asyncio.sleep(0.02)
        yield int(sock.getsockname()[1])
    finally:
        op.deps.stopping.set()  # as on SIGTERM: followed streams end, their clients resume
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
        op.deps.stopping.clear()


async def _tick(op: Operator, project_id: str, n: int) -> None:
    async with op.deps.db.connection() as conn:
        await events.record(conn, "test.tick", f"tick {n}", project_id=project_id)  # type: ignore[arg-type]


def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()


async def test_events_follow_survives_an_operator_restart_without_duplicates(
    operator: Operator, tmp_path: Path
) -> None:
    p = await platform(operator)
    project = p.project["id"]
    for n in (1, 2):
        await _tick(operator, project, n)
    first = _serving_on(operator, 0)
    port = await first.__aenter__()
    cli = Cli(p=p, url=f"http://127.0.0.1:{port}", data_dir=tmp_path)
    proc = await cli.start("events", p.project["slug"], "-f", "--json", "--kind", "test.")
    assert proc.stdout is not None
    stdout = proc.stdout
    seen: list[str] = []

    async def read_until(message: str) -> None:
        while message not in seen:
            line = await asyncio.wait_for(stdout.readline(), 30)
            assert line, "the follow ended"
            seen.append(json.loads(line)["message"])

    try:
        try:
            await read_until("tick 2")
            await _tick(operator, project, 3)
            await read_until("tick 3")
        finally:
            await first.__aexit__(None, None, None)  # the operator stops
        await _tick(operator, project, 4)  # while nothing answers
        async with _serving_on(operator, port):
            await _tick(operator, project, 5)
            try:
                await read_until("tick 5")
            finally:
                _stop(proc)  # before the operator stops: no stream left open
    finally:
        _stop(proc)
    _, err = await proc.communicate()
    assert seen == [f"tick {n}" for n in range(1, 6)]
    assert "reconnecting in" in err.decode()
    assert "Traceback" not in err.decode()


async def test_logs_say_a_node_they_cannot_read_and_refuse_an_unknown_release(cli: Cli) -> None:
    await _serving_v1(cli)
    slug = cli.p.project["slug"]
    hostnames = {
        row[0] for row in await cli.p.op.sql("SELECT hostname FROM nodes WHERE state = 'ready'")
    }
    code, out, err = await cli.run("logs", slug, "--since", "10m", drive=False)
    assert code == 0, err
    assert out == ""  # the fake agents have no log API: nothing to print, but said
    said = {line for line in err.splitlines()}
    assert said == {
        f"zeitwork: node {h}: the node's agent registered no API address" for h in hostnames
    }, err
    code, out, err = await cli.run("logs", slug, "--release", "v9", drive=False)
    assert code == 1
    assert len(err.splitlines()) == 1 and "v9" in err, err
    code, _, err = await cli.run("logs", slug, "--since", "yesterday", drive=False)
    assert code == 2
    assert "give a duration (10m, 2h) or a time" in err
