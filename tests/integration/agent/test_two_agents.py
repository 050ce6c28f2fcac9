"""Two agents on one host (issue 16 item 11): different data dirs and bridges, but one runc
root, one cgroup parent and each its default nft table. Starting, SIGKILLing and
restarting either one never touches the other's containers, cgroups, namespaces, veths or
firewall rules: every instance keeps its process and keeps serving."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.contract.runtime.harness import wait_http
from tests.images import BuiltImage
from tests.integration.agent.harness import AgentHost, instance_body, preload
from zeitwork.agent.network import links, nft
from zeitwork.agent.network.node import veth_name

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


async def _running(host: AgentHost, instance_id: str, timeout: float = 20.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: dict[str, Any] = {}
    async with host.client() as client:
        while loop.time() < deadline:
            response = await client.get(f"/instances/{instance_id}")
            assert response.status_code == 200, response.text
            last = response.json()
            if last["state"] == "running":
                return last
            await asyncio.sleep(0.05)
    raise AssertionError(f"instance {instance_id} not running: {last}")


async def _create(host: AgentHost, image: BuiltImage) -> str:
    async with host.client() as client:
        response = await client.post("/instances", json=instance_body(image))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


async def _intact(host: AgentHost, instance_id: str, pid: int, address: str) -> None:
    """The instance still has its process, its namespace, its veth, and serves."""
    assert os.path.exists(f"/proc/{pid}"), f"{instance_id}: process {pid} is gone"
    assert host.record(instance_id)["handle"]["data"]["pid"] == pid
    namespace = host.data_dir / "agent" / "network" / "netns" / uuid.UUID(instance_id).hex
    assert namespace.exists(), f"{instance_id}: namespace removed"
    ours = await asyncio.to_thread(links.links_with_prefix, "zwv", master=host.bridge)
    assert veth_name(uuid.UUID(instance_id)) in ours, f"{instance_id}: veth removed"
    status, _ = await wait_http(f"http://{address}:8080/", timeout=3)
    assert status == 200


async def test_two_agents_on_one_host_never_touch_each_others_instances(
    agent_host: Callable[..., AgentHost], busybox_image: BuiltImage, tmp_path: Path
) -> None:
    shared: dict[str, Any] = {
        "shared_run_dir": tmp_path / "shared-run",
        "shared_cgroup_parent": f"zwtest-shared-{uuid.uuid4().hex[:6]}",
        "own_nft_table": False,
    }
    first, second = agent_host(**shared), agent_host(**shared)
    assert first.run_dir == second.run_dir and first.cgroup_parent == second.cgroup_parent
    assert first.nft_table != second.nft_table  # named after each bridge by default
    for host in (first, second):
        await preload(host.data_dir, busybox_image)

    first.start()
    await first.wait_ready()
    a_id = await _create(first, busybox_image)
    a_view = await _running(first, a_id)
    a_pid = int(first.record(a_id)["handle"]["data"]["pid"])
    await _intact(first, a_id, a_pid, a_view["ip_address"])

    # the second agent starts (its recovery runs) beside the first one's instance
    second.start()
    await second.wait_ready()
    await _intact(first, a_id, a_pid, a_view["ip_address"])
    b_id = await _create(second, busybox_image)
    b_view = await _running(second, b_id)
    b_pid = int(second.record(b_id)["handle"]["data"]["pid"])
    await _intact(second, b_id, b_pid, b_view["ip_address"])
    for host in (first, second):  # each agent's NAT table is still its own and in place
        assert host.subnet is not None and host.subnet in await nft.list_table(host.nft_table)

    # each one crashes and comes back: re-adopts its own, leaves the other's alone
    for crashed, other, (own_id, own_pid, own_view), (other_id, other_pid, other_view) in (
        (second, first, (b_id, b_pid, b_view), (a_id, a_pid, a_view)),
        (first, second, (a_id, a_pid, a_view), (b_id, b_pid, b_view)),
    ):
        crashed.kill()
        crashed.start()
        await crashed.wait_ready()
        await _running(crashed, own_id)
        await _intact(crashed, own_id, own_pid, own_view["ip_address"])
        await _intact(other, other_id, other_pid, other_view["ip_address"])
        log_text = crashed.log_path.read_text()
        assert other_id.replace("-", "") not in log_text  # never even named in a clean-up
        assert "instance.adopted" in log_text
