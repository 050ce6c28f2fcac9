"""Node agents on network-namespace "hosts" joined by a LAN bridge, one real operator in the
root namespace: placement on both hosts, reachability across hosts and from the root
namespace through the routes between node subnets, agent kill and re-adoption, egress NAT."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.contract.runtime.harness import wait_http
from tests.e2e.lan import Lan
from tests.e2e.releases_kit import start_two_agents
from tests.images import BuiltImage
from tests.integration.agent.harness import AgentHost, instance_body, preload
from zeitwork.agent.network import netns

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


def _get_from(namespace: str, url: str) -> int:
    with (
        netns.entered(Path("/run/netns") / namespace),
        urllib.request.urlopen(url, timeout=2) as response,
    ):
        return int(response.status)


async def _wait_running(host: AgentHost, instance_id: str, api: str) -> dict[str, object]:
    async with host.client(api) as client:
        for _ in range(400):
            view = (await client.get(f"/instances/{instance_id}")).json()
            if view["state"] == "running":
                return dict(view)
            await asyncio.sleep(0.05)
    raise AssertionError(f"{instance_id} never ran: {view}")


async def test_egress_is_masqueraded_behind_the_node_address(
    lan: Lan, hosts: Callable[..., AgentHost], tmp_path: Path
) -> None:
    """An instance calling out to the LAN appears with its node's address (nftables NAT):
    the root namespace has no route back to the node subnet here."""
    import http.server
    import threading

    from tests.images import build_image

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.client_address[0])
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer((lan.gateway, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = lan.add_host()
        caller = build_image(
            tmp_path / "caller.tar",
            entrypoint=[
                "/bin/sh",
                "-c",
                "while true; do /bin/busybox wget -q -O /dev/null $TARGET; sleep 0.2; done",
            ],
            cmd=None,
        )
        host = hosts(netns=name, subnet=f"10.{random.randint(0, 200)}.9.0/24")
        await preload(host.data_dir, caller)
        host.start()
        await host.wait_ready()
        target = f"http://{lan.gateway}:{server.server_address[1]}/ping"
        body = instance_body(caller, environment_variables={"TARGET": target})
        async with host.client(lan.address(0)) as client:
            response = await client.post("/instances", json=body)
            assert response.status_code == 201, response.text
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen, "the instance never reached the LAN"
        assert set(seen) == {lan.address(0)}
    finally:
        server.shutdown()
        server.server_close()


async def test_operator_places_on_two_hosts_and_agents_survive_restart(
    lan: Lan,
    hosts: Callable[..., AgentHost],
    busybox_image: BuiltImage,
    migrated_database: str,
    tmp_path: Path,
) -> None:
    """Issue 3 item 10 with a real operator in the root namespace: instances placed on both
    hosts, reachable across hosts and from the root namespace; agent A killed and
    restarted re-adopts its instance exactly once."""
    from tests.integration.agent.operator_process import (
        OperatorProcess,
        import_image,
        wait_json,
    )

    second = random.randint(0, 200)
    pool = f"10.{second}.0.0/16"
    operator = OperatorProcess(
        database_url=migrated_database,
        root=tmp_path / "operator",
        extra_env={"ZEITWORK_INSTANCE_NETWORK": pool},
    )
    operator.start()
    try:
        await operator.wait_ready()
        join = await operator.join_token()
        image_id = await import_image(operator, busybox_image.path)
        # no ZEITWORK_NODE_SUBNET, no ZEITWORK_PEER_ROUTES: the operator allocates the
        # subnets and sends each agent the other's (peer routes); each agent downloads the
        # image from the operator over the LAN
        names, agents = await start_two_agents(
            lan, hosts, operator.url(lan.gateway), join, {"ZEITWORK_HEARTBEAT_INTERVAL": "1"}
        )

        async with operator.client() as op:
            listed = await _both_ready(op, wait_json)
            node_of = {n["ip_address"]: n["id"] for n in _nodes(listed)}
            subnet_of = {n["ip_address"]: n["subnet"] for n in _nodes(listed)}
            subnets = [subnet_of[lan.address(index)] for index in range(2)]
            assert sorted(subnets) == [f"10.{second}.0.0/24", f"10.{second}.1.0/24"]
            for index in range(2):
                assert agents[index].allocated_subnet() == subnets[index]
            instance_ids = []
            for index in range(2):
                created = await op.post(
                    "/api/v1/instances",
                    json={
                        "image_id": image_id,
                        "resources": {"vcpu": 0.25, "memory": 64},
                        "default_port": 8080,
                        "node_id": node_of[lan.address(index)],
                    },
                )
                assert created.status_code == 201, created.text
                instance_ids.append(created.json()["id"])
            running = [
                await wait_json(
                    op, f"/api/v1/instances/{i}", lambda body: body["state"] == "running"
                )
                for i in instance_ids
            ]
        a_url = f"http://{running[0]['ip_address']}:8080/"
        b_url = f"http://{running[1]['ip_address']}:8080/"
        for index in range(2):
            address = ipaddress.IPv4Address(running[index]["ip_address"])
            assert address in ipaddress.IPv4Network(subnets[index])
        # across hosts through the peer routes the agents installed from the operator's
        # peers (the root namespace has no route to the subnets yet: the hosts' default
        # route leads nowhere for them)
        assert await _eventually_get_from(names[1], a_url) == 200
        assert await _eventually_get_from(names[0], b_url) == 200
        for index in range(2):
            other = 1 - index
            shown = subprocess.run(
                ["ip", "-n", names[index], "route", "show", subnets[other]],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            assert f"via {lan.address(other)}" in shown, shown
            lan.route_from_root(subnets[index], lan.address(index))
        assert (await wait_http(a_url, timeout=5))[0] == 200

        pid = agents[0].record(instance_ids[0])["handle"]["data"]["pid"]
        agents[0].kill()
        assert await asyncio.to_thread(_get_from, names[1], a_url) == 200
        agents[0].start()
        await agents[0].wait_ready()
        async with agents[0].client(lan.address(0)) as client:
            view = await wait_json(
                client, f"/instances/{instance_ids[0]}", lambda body: body["state"] == "running"
            )
        assert view["ip_address"] == running[0]["ip_address"]
        assert agents[0].record(instance_ids[0])["handle"]["data"]["pid"] == pid
        assert "oci.started" not in agents[0].log_path.read_text()
        async with operator.client() as op:
            still = (await op.get(f"/api/v1/instances/{instance_ids[0]}")).json()
            assert still["state"] == "running"
        assert await asyncio.to_thread(_get_from, names[1], a_url) == 200
    finally:
        operator.stop()


async def test_a_dead_hosts_deployment_comes_back_on_the_other_host(
    lan: Lan,
    hosts: Callable[..., AgentHost],
    busybox_image: BuiltImage,
    migrated_database: str,
    tmp_path: Path,
) -> None:
    """Host A dies (agent SIGKILLed, its containers gone): after the heartbeat timeout and
    the reschedule grace the operator replaces the deployment's instance on host B, where
    it serves; when A comes back its agent removes the lost instance, and the route table
    never advertises both."""
    from tests.integration.agent.operator_process import (
        OperatorProcess,
        import_image,
        wait_json,
    )

    second = random.randint(0, 200)
    operator = OperatorProcess(
        database_url=migrated_database,
        root=tmp_path / "operator",
        extra_env={
            "ZEITWORK_INSTANCE_NETWORK": f"10.{second}.0.0/16",
            "ZEITWORK_NODE_HEARTBEAT_TIMEOUT": "3",
            "ZEITWORK_RESCHEDULE_AFTER": "4",
        },
    )
    operator.start()
    try:
        await operator.wait_ready()
        join = await operator.join_token()
        image_id = await import_image(operator, busybox_image.path)
        names, agents = await start_two_agents(
            lan,
            hosts,
            operator.url(lan.gateway),
            join,
            {"ZEITWORK_HEARTBEAT_INTERVAL": "0.5", "ZEITWORK_RESYNC_INTERVAL": "5"},
            preload_image=busybox_image,
        )
        async with operator.client() as op:
            listed = await _both_ready(op, wait_json)
            index_of = {
                n["id"]: names.index(_host_of(lan, n["ip_address"])) for n in _nodes(listed)
            }
            project = await op.post("/api/v1/projects", json={"name": f"p{lan.suffix}"})
            assert project.status_code == 201, project.text
            created = await op.post(
                "/api/v1/deployments",
                json={
                    "project_id": project.json()["id"],
                    "image_id": image_id,
                    "replicas": 1,
                    "resources": {"vcpu": 0.25, "memory": 64},
                    "port": 8080,
                },
            )
            assert created.status_code == 201, created.text
            deployment = created.json()
            [first] = deployment["instances"]
            running = await wait_json(
                op, f"/api/v1/instances/{first['id']}", lambda body: body["state"] == "running"
            )
            dead = index_of[first["node_id"]]
            alive = 1 - dead
            url = f"http://{running['ip_address']}:8080/"
            assert await _eventually_get_from(names[alive], url) == 200

            await agents[dead].kill_host()
            lost = await wait_json(
                op,
                f"/api/v1/instances/{first['id']}",
                lambda body: body["state"] == "failed",
                timeout=40,
            )
            assert "lost" in lost["reason"] and lost["desired_state"] == "terminated"
            got = await wait_json(
                op,
                f"/api/v1/deployments/{deployment['id']}",
                lambda body: len(body["instance_ids"]) == 2,
            )
            [replacement] = set(got["instance_ids"]) - {first["id"]}
            moved = await wait_json(
                op,
                f"/api/v1/instances/{replacement}",
                lambda body: body["state"] == "running",
                timeout=40,
            )
            assert index_of[moved["node_id"]] == alive
            new_url = f"http://{moved['ip_address']}:8080/"
            assert await _eventually_get_from(names[alive], new_url) == 200
            routes = (await op.get("/api/v1/routes")).json()
            assert [b["address"] for b in routes["default_backends"]] == [
                f"{moved['ip_address']}:8080"
            ]

            # host A comes back: its agent removes the lost instance; routes stay single
            agents[dead].start()
            await agents[dead].wait_ready()
            await wait_json(
                op,
                f"/api/v1/instances/{first['id']}",
                lambda body: body["state"] == "terminated",
                timeout=40,
            )
            await wait_json(
                op, f"/api/v1/nodes/{first['node_id']}", lambda body: body["state"] == "ready"
            )
            routes = (await op.get("/api/v1/routes")).json()
            assert [b["address"] for b in routes["default_backends"]] == [
                f"{moved['ip_address']}:8080"
            ]
        async with agents[dead].client(lan.address(dead)) as client:
            listed_here = (await client.get("/instances")).json()
            assert isinstance(listed_here, list)
            assert first["id"] not in [i["id"] for i in listed_here]
    finally:
        operator.stop()


async def _both_ready(op: Any, wait_json: Callable[..., Any]) -> Any:
    """The operator's node list once both nodes are ready."""
    return await wait_json(
        op,
        "/api/v1/nodes",
        lambda body: sum(1 for n in _nodes(body) if n["state"] == "ready") >= 2,
    )


def _host_of(lan: Lan, ip_address: str) -> str:
    return lan.hosts[[lan.address(i) for i in range(len(lan.hosts))].index(ip_address)]


async def _eventually_get_from(namespace: str, url: str, seconds: float = 10.0) -> int:
    """``_get_from``, retried while the peer routes converge."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            return await asyncio.to_thread(_get_from, namespace, url)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


def _nodes(body: object) -> list[dict[str, str]]:
    if isinstance(body, dict):
        return list(body.get("items") or body.get("data") or [])
    return list(body)  # type: ignore[call-overload]
