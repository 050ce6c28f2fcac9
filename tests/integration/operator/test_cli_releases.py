"""The app verbs of ``zeitwork`` run as real processes against a real operator (its app on a
real socket, the real PostgreSQL), while the test drives the reconcile loop and fake agents
that report state and health: deploy followed to the end, a failing release's cause and exit
status, rollback, releases, status, env, scale, events, node drain."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import heartbeat_body
from tests.integration.operator.live_server import live_operator
from tests.integration.operator.releases_kit import Platform, bind, platform

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

    async def run(
        self, *args: str, drive: bool = True, deadline: float = 60.0
    ) -> tuple[int, str, str]:
        """Run ``zeitwork ARGS`` to its end; with ``drive``, step the platform meanwhile
        (the reconcile loop, the agents' syncs and heartbeats)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("OPERATOR_URL", "ZEITWORK_TOKEN", "ZEITWORK_DATA_DIR")
        }
        env |= {
            "OPERATOR_URL": self.url,
            "ZEITWORK_TOKEN": self.p.op.admin_token,
            "ZEITWORK_DATA_DIR": str(self.data_dir),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zeitwork",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
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
