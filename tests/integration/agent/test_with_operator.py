"""Agent and a real operator: registration with a join token, heartbeats, an instance
placed by the operator, state reports, re-adoption after kill -9, removal, and an operator
outage that leaves instances alone."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.contract.runtime.harness import wait_http
from tests.images import BuiltImage
from tests.integration.agent.harness import AgentHost
from tests.integration.agent.operator_process import (
    OperatorProcess,
    import_image,
    wait_json,
)

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


async def _agent_contact(database_url: str, node_id: str) -> tuple[str | None, str | None]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT agent_url, agent_token FROM nodes WHERE id = %s", (node_id,)
        )
        row = await cursor.fetchone()
    assert row is not None
    return row[0], row[1]


@pytest.fixture
def operator_process(migrated_database: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    made = OperatorProcess(database_url=migrated_database, root=tmp_path / "operator")
    try:
        yield made
    finally:
        made.stop()


async def test_operator_places_instance_agent_runs_reports_and_readopts(
    operator_process: OperatorProcess,
    agent_host: Callable[..., AgentHost],
    busybox_image: BuiltImage,
    migrated_database: str,
) -> None:
    operator_process.start()
    await operator_process.wait_ready()
    join = await operator_process.join_token()
    image_id = await import_image(operator_process, busybox_image.path)
    host = agent_host(
        extra_env={
            "OPERATOR_URL": operator_process.url(),
            "ZEITWORK_JOIN_TOKEN": join,
            "ZEITWORK_HEARTBEAT_INTERVAL": "1",
            "ZEITWORK_ASSIGNMENT_WAIT": "20",
        }
    )
    host.start()  # the image is not cached: the agent downloads it from the operator
    await host.wait_ready()

    credential = host.data_dir / "agent" / "node.json"
    async with operator_process.client() as op:
        nodes = await wait_json(
            op, "/api/v1/nodes", lambda body: any(n["state"] == "ready" for n in _items(body))
        )
        node = next(n for n in _items(nodes) if n["state"] == "ready")
        assert stat.S_IMODE(credential.stat().st_mode) == 0o600
        assert json.loads(credential.read_text())["node_id"] == node["id"]
        assert node["runtime"] == "oci"
        # the operator learnt where and with which credential to call this agent
        agent_url, agent_token = await _agent_contact(migrated_database, node["id"])
        own_token = (host.data_dir / "agent" / "agent_token").read_text().strip()
        assert agent_token == own_token
        assert agent_url == f"http://127.0.0.1:{host.port}"
        async with httpx.AsyncClient(base_url=agent_url, timeout=5) as direct:
            called = await direct.get(
                "/instances", headers={"Authorization": f"Bearer {agent_token}"}
            )
            assert called.status_code == 200, called.text
            refused = await direct.get(
                "/instances", headers={"Authorization": "Bearer " + "x" * 40}
            )
            assert refused.status_code == 401

        created = await op.post(
            "/api/v1/instances",
            json={
                "image_id": image_id,
                "resources": {"vcpu": 0.25, "memory": 64},
                "default_port": 8080,
                "node_id": node["id"],
            },
        )
        assert created.status_code == 201, created.text
        instance_id = created.json()["id"]
        running = await wait_json(
            op, f"/api/v1/instances/{instance_id}", lambda i: i["state"] == "running"
        )
        assert running["ip_address"] and running["port"] == 8080
        url = f"http://{running['ip_address']}:8080/"
        assert (await wait_http(url, timeout=5))[0] == 200

        pid = host.record(instance_id)["handle"]["data"]["pid"]
        host.kill()
        assert (await wait_http(url, timeout=2))[0] == 200
        host.start()  # registers again with the stored credential (no join token needed)
        await host.wait_ready()
        async with host.client() as agent:
            view = await wait_json(
                agent, f"/instances/{instance_id}", lambda i: i["state"] == "running"
            )
            assert view["ip_address"] == running["ip_address"]
        assert host.record(instance_id)["handle"]["data"]["pid"] == pid
        assert "oci.started" not in host.log_path.read_text()
        assert (await wait_http(url, timeout=2))[0] == 200

        # the operator goes away: the instance keeps serving, the agent keeps retrying
        operator_process.stop()
        for _ in range(600):  # until the agent has noticed (a failed heartbeat)
            if "operator.heartbeat_failed" in host.log_path.read_text():
                break
            await asyncio.sleep(0.05)
        assert "operator.heartbeat_failed" in host.log_path.read_text()
        assert (await wait_http(url, timeout=2))[0] == 200
        operator_process.start(same_port=True)
        await operator_process.wait_ready()

    async with operator_process.client() as op:
        # the agent finds the operator again by itself and acts on its changes
        terminated = await op.delete(f"/api/v1/instances/{instance_id}")
        assert terminated.status_code == 202, terminated.text
        await wait_json(
            op, f"/api/v1/instances/{instance_id}", lambda i: i["state"] == "terminated"
        )
    with pytest.raises(AssertionError):
        await wait_http(url, timeout=0.5)
    assert instance_id not in [i.stem for i in (host.data_dir / "agent" / "instances").iterdir()]


def _items(body: object) -> list[dict[str, object]]:
    if isinstance(body, dict):
        return list(body.get("items") or body.get("data") or [])
    return list(body)  # type: ignore[call-overload]
