"""The agent takes its node subnet from the operator (no ZEITWORK_NODE_SUBNET), keeps it in
its data dir, and an explicit subnet that disagrees with what the operator recorded is a
clear error (readiness says why) instead of a second node on one subnet."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.agent.harness import AgentHost
from tests.integration.agent.operator_process import OperatorProcess, wait_json

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


@pytest.fixture
def operator_process(migrated_database: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    made = OperatorProcess(
        database_url=migrated_database,
        root=tmp_path / "operator",
        extra_env={"ZEITWORK_INSTANCE_NETWORK": f"10.{random.randint(150, 250)}.0.0/16"},
    )
    try:
        yield made
    finally:
        made.stop()


async def _ready_reason(host: AgentHost, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=host.api_url(), timeout=5) as client:
        while time.monotonic() < deadline:
            response = await client.get("/health/ready")
            if response.status_code == 503 and "recorded" in response.text:
                return response.text
            await asyncio.sleep(0.1)
    raise AssertionError(f"readiness never named the subnet conflict: {response.text}")


async def test_subnet_from_the_operator_and_a_mismatch_is_refused(
    operator_process: OperatorProcess, agent_host: Callable[..., AgentHost]
) -> None:
    operator_process.start()
    await operator_process.wait_ready()
    pool = operator_process.extra_env["ZEITWORK_INSTANCE_NETWORK"]
    given = pool.replace(".0.0/16", ".0.0/24")
    join = await operator_process.join_token()
    host = agent_host(
        subnet=None,
        extra_env={
            "OPERATOR_URL": operator_process.url(),
            "ZEITWORK_JOIN_TOKEN": join,
            "ZEITWORK_HEARTBEAT_INTERVAL": "1",
        },
    )
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        info = (await client.get("/node/info")).json()
    assert info["network"]["subnet"] == given
    assert host.allocated_subnet() == given
    stored = json.loads((host.data_dir / "agent" / "subnet.json").read_text())
    assert stored == {"subnet": given}
    async with operator_process.client() as op:
        node = await wait_json(
            op, f"/api/v1/nodes/{info['node_id']}", lambda body: body["state"] == "ready"
        )
    assert node["subnet"] == given

    # restart with the kept subnet: the same one, no operator round trip needed to start
    assert host.terminate() == 0
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        assert (await client.get("/node/info")).json()["network"]["subnet"] == given
    assert host.terminate() == 0

    # an explicit, different subnet: the operator refuses, the agent says why
    host.subnet = pool.replace(".0.0/16", ".77.0/24")
    host.start()
    await host.wait_ready()
    reason = await _ready_reason(host)
    assert given in reason and host.subnet in reason
    assert "operator.register_refused" in host.log_path.read_text()
