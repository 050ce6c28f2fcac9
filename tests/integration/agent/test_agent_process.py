"""The agent as a real process: local API, real runc containers on a real bridge, and the
restart-safety promise (kill -9 the agent: instances keep serving; restart: re-adopted
exactly once, strays cleaned)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.contract.runtime.harness import wait_http
from tests.images import BuiltImage
from tests.integration.agent.harness import AgentHost, instance_body, preload
from zeitwork.agent.network import links, netns

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


async def _wait_state(client: object, instance_id: str, state: str, timeout: float = 20.0) -> dict:  # type: ignore[type-arg]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: dict = {}  # type: ignore[type-arg]
    while loop.time() < deadline:
        response = await client.get(f"/instances/{instance_id}")  # type: ignore[attr-defined]
        assert response.status_code == 200, response.text
        last = response.json()
        if last["state"] == state:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"instance {instance_id} not {state}: {last}")


async def test_api_requires_a_token(
    agent_host: Callable[..., AgentHost], busybox_image: BuiltImage
) -> None:
    host = agent_host()
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        client.headers.pop("Authorization")
        denied = await client.get("/instances")
        assert denied.status_code == 401
        assert denied.headers["content-type"].startswith("application/problem+json")
        wrong = await client.get("/instances", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        health = await client.get("/health")
        assert health.status_code == 200
        # answers are not held back by Nagle + delayed ACK (that costs >= 40 ms a request)
        took = []
        for _ in range(9):
            began = asyncio.get_running_loop().time()
            await client.get("/health")
            took.append(asyncio.get_running_loop().time() - began)
        assert sorted(took)[4] < 0.035, took


async def test_run_kill_restart_readopts_exactly_once_and_cleans_strays(
    agent_host: Callable[..., AgentHost], busybox_image: BuiltImage
) -> None:
    host = agent_host()
    await preload(host.data_dir, busybox_image)
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        info = (await client.get("/node/info")).json()
        assert info["runtime"]["name"] == "oci"
        assert "ZEITWORK_RUNTIME=oci" in info["runtime"]["reason"]
        created = []
        for _ in range(2):
            response = await client.post("/instances", json=instance_body(busybox_image))
            assert response.status_code == 201, response.text
            created.append(response.json()["id"])
        views = [await _wait_state(client, i, "running") for i in created]
        for view in views:
            assert view["ip_address"] and view["port"] == 8080
            status, body = await wait_http(f"http://{view['ip_address']}:8080/")
            assert status == 200 and "zeitwork test app" in body
        logs = await client.get(f"/instances/{created[0]}/logs", params={"tail": 10})
        assert logs.status_code == 200
        resources = (await client.get("/node/resources")).json()
        assert resources["used"]["memory"] == 128
        metrics = (await client.get("/metrics")).text
        assert 'zeitwork_agent_instances{state="running"} 2.0' in metrics
        assert "zeitwork_agent_instance_starts 2.0" in metrics
    pids = {i: host.record(i)["handle"]["data"]["pid"] for i in created}

    host.kill()  # no clean-up, no drain: like a crash or an OOM of the agent itself
    for view in views:
        status, _ = await wait_http(f"http://{view['ip_address']}:8080/", timeout=2)
        assert status == 200

    # strays of our own kind, as a crashed agent could leave them
    stray_ns = host.data_dir / "agent" / "network" / "netns" / ("f" * 32)
    await asyncio.to_thread(netns.create, stray_ns)
    stray_dir = host.data_dir / "agent" / "oci" / ("zw-" + "e" * 32)
    (stray_dir / "rootfs").mkdir(parents=True)

    host.start()
    await host.wait_ready()
    async with host.client() as client:
        for instance_id, view in zip(created, views, strict=True):
            again = await _wait_state(client, instance_id, "running")
            assert again["ip_address"] == view["ip_address"]
            assert host.record(instance_id)["handle"]["data"]["pid"] == pids[instance_id]
            assert os.path.exists(f"/proc/{pids[instance_id]}")
            status, _ = await wait_http(f"http://{view['ip_address']}:8080/", timeout=2)
            assert status == 200
        assert not stray_ns.exists()
        assert not stray_dir.exists()
        log_text = host.log_path.read_text()
        assert "instance.adopted" in log_text
        assert "oci.started" not in log_text  # nothing started twice

        # removing one: stopped, destroyed, its address and veth released
        gone = created[0]
        response = await client.delete(f"/instances/{gone}")
        assert response.status_code == 202
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while (await client.get(f"/instances/{gone}")).status_code != 404:
            assert loop.time() < deadline, "instance not removed"
            await asyncio.sleep(0.05)
        assert not (host.data_dir / "agent" / "instances" / f"{gone}.json").exists()
        from uuid import UUID

        from zeitwork.agent.network import veth_name

        assert veth_name(UUID(gone)) not in await asyncio.to_thread(links.links_with_prefix, "zwv")

    assert host.terminate() == 0
    # SIGTERM without --drain leaves the instance running
    status, _ = await wait_http(f"http://{views[1]['ip_address']}:8080/", timeout=2)
    assert status == 200


async def test_drain_stops_instances(
    agent_host: Callable[..., AgentHost], busybox_image: BuiltImage, tmp_path: Path
) -> None:
    host = agent_host()
    await preload(host.data_dir, busybox_image)
    host.start("--drain")
    await host.wait_ready()
    async with host.client() as client:
        response = await client.post("/instances", json=instance_body(busybox_image))
        instance_id = response.json()["id"]
        view = await _wait_state(client, instance_id, "running")
        # stop and start again through the API
        stopped = await client.put(f"/instances/{instance_id}/state", json={"state": "stopped"})
        assert stopped.status_code == 200
        assert stopped.json()["desired_state"] == "stopped"
        await _wait_state(client, instance_id, "stopped")
        bad = await client.put(f"/instances/{instance_id}/state", json={"state": "paused"})
        assert bad.status_code == 422
        await client.put(f"/instances/{instance_id}/state", json={"state": "running"})
        view = await _wait_state(client, instance_id, "running")
        assert (await wait_http(f"http://{view['ip_address']}:8080/", timeout=5))[0] == 200
        missing = await client.get("/instances/not-a-uuid")
        assert missing.status_code == 400 or missing.status_code == 422
    assert host.terminate() == 0
    with pytest.raises(AssertionError):
        await wait_http(f"http://{view['ip_address']}:8080/", timeout=0.5)
    assert host.record(instance_id)["state"] == "stopped"


async def test_agent_without_a_usable_operator_keeps_running_its_instances(
    agent_host: Callable[..., AgentHost], busybox_image: BuiltImage
) -> None:
    """No credential and no join token for an operator that does not answer: the agent
    says so (readiness, /node/info, log) and keeps serving through its local API."""
    host = agent_host(extra_env={"OPERATOR_URL": "http://127.0.0.1:1"})
    await preload(host.data_dir, busybox_image)
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        response = await client.post("/instances", json=instance_body(busybox_image))
        view = await _wait_state(client, response.json()["id"], "running")
        assert (await wait_http(f"http://{view['ip_address']}:8080/", timeout=5))[0] == 200
        info = (await client.get("/node/info")).json()
        assert "ZEITWORK_JOIN_TOKEN" in (info["operator"]["last_error"] or "")
        assert info["operator"]["registered"] is False
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert "ZEITWORK_JOIN_TOKEN" in ready.json()["detail"]
    assert host.process is not None and host.process.poll() is None
    assert "operator.register_refused" in host.log_path.read_text()


async def test_logs_follow_streams_until_the_workload_ends(
    agent_host: Callable[..., AgentHost], tmp_path: Path
) -> None:
    from tests.images import build_image

    chatty = build_image(
        tmp_path / "chatty.tar",
        entrypoint=["/bin/sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done"],
        cmd=None,
    )
    host = agent_host()
    await preload(host.data_dir, chatty)
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        body = instance_body(chatty, restart_policy="never")
        body["image"]["digest"] = chatty.digest
        instance_id = (await client.post("/instances", json=body)).json()["id"]
        lines = []  # following right away: the agent waits for the workload to exist
        async with client.stream(
            "GET", f"/instances/{instance_id}/logs", params={"follow": "true", "tail": "10"}
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                lines.append(line)
        assert [line for line in lines if line.startswith("line")] == ["line1", "line2", "line3"]
        final = await _wait_state(client, instance_id, "stopped")
        assert final["exit_code"] == 0
        assert final["log_tail"][-1] == "line3"
        tail = await client.get(f"/instances/{instance_id}/logs", params={"tail": 2})
        assert tail.text == "line2\nline3\n"


async def test_instance_that_died_while_the_agent_was_down_is_restarted(
    agent_host: Callable[..., AgentHost], busybox_image: BuiltImage
) -> None:
    from zeitwork.runtime.oci import RuncCli

    host = agent_host()
    await preload(host.data_dir, busybox_image)
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        instance_id = (await client.post("/instances", json=instance_body(busybox_image))).json()[
            "id"
        ]
        await _wait_state(client, instance_id, "running")
    old_pid = host.record(instance_id)["handle"]["data"]["pid"]
    host.kill()
    runc = RuncCli(root=host.run_dir / "runc")
    await runc.kill("zw-" + instance_id.replace("-", ""), "KILL")
    for _ in range(100):
        if not os.path.exists(f"/proc/{old_pid}"):
            break
        await asyncio.sleep(0.02)
    host.start()
    await host.wait_ready()
    async with host.client() as client:
        for _ in range(400):
            view = (await client.get(f"/instances/{instance_id}")).json()
            record = host.record(instance_id)
            handle = record.get("handle") or {}
            if view["state"] == "running" and handle.get("data", {}).get("pid") != old_pid:
                break
            await asyncio.sleep(0.05)
        assert view["state"] == "running", view
        assert view["restarts"] == 1
        assert (await wait_http(f"http://{view['ip_address']}:8080/", timeout=5))[0] == 200
    log_text = host.log_path.read_text()
    assert "exit status unknown" in log_text
