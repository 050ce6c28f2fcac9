"""Two node agents on two network-namespace "hosts" joined by a LAN bridge.

Standalone agents (instances placed through each agent's own API): instances on host A are
reachable from host B and from the root namespace through the routes between node subnets;
killing agent A leaves its instances serving; restarting it re-adopts them exactly once.
(The same scenario driven by a real operator's placement is listed as not done yet in
docs/node-agent.md until the operator's assignment endpoints exist.)"""

from __future__ import annotations

import asyncio
import random
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.contract.runtime.harness import wait_http
from tests.e2e.lan import Lan
from tests.images import BuiltImage
from tests.integration.agent.harness import AgentHost, instance_body, preload
from zeitwork.agent.network import netns

pytestmark = [pytest.mark.requires_root, pytest.mark.slow]


@pytest.fixture
def lan() -> Iterator[Lan]:
    made = Lan()
    made.up()
    try:
        yield made
    finally:
        made.down()


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[Callable[..., AgentHost]]:
    made: list[AgentHost] = []

    def make(**kwargs: object) -> AgentHost:
        host = AgentHost(root=tmp_path / f"node{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(host)
        return host

    try:
        yield make
    finally:
        for host in made:
            await host.cleanup()


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


async def test_two_hosts_reach_each_others_instances_and_survive_agent_restart(
    lan: Lan, hosts: Callable[..., AgentHost], busybox_image: BuiltImage
) -> None:
    second = random.randint(0, 200)
    subnets = [f"10.{second}.1.0/24", f"10.{second}.2.0/24"]
    names = [lan.add_host(), lan.add_host()]
    agents = []
    for index, name in enumerate(names):
        other = 1 - index
        host = hosts(
            netns=name,
            subnet=subnets[index],
            extra_env={
                "ZEITWORK_PEER_ROUTES": f"{subnets[other]}={lan.address(other)}",
                "NODE_IP": lan.address(index),
            },
        )
        await preload(host.data_dir, busybox_image)
        host.start()
        agents.append(host)
        lan.route_from_root(subnets[index], lan.address(index))
    for host in agents:
        await host.wait_ready()

    views = []
    for index, host in enumerate(agents):
        async with host.client(lan.address(index)) as client:
            response = await client.post("/instances", json=instance_body(busybox_image))
            assert response.status_code == 201, response.text
            views.append(await _wait_running(host, response.json()["id"], lan.address(index)))
    a_url = f"http://{views[0]['ip_address']}:8080/"
    b_url = f"http://{views[1]['ip_address']}:8080/"
    assert str(views[0]["ip_address"]).startswith(f"10.{second}.1.")
    assert str(views[1]["ip_address"]).startswith(f"10.{second}.2.")

    # from the root namespace, through the routes to each node's subnet
    assert (await wait_http(a_url, timeout=5))[0] == 200
    assert (await wait_http(b_url, timeout=5))[0] == 200
    # host B reaches the instance on host A, and A reaches B's
    assert await asyncio.to_thread(_get_from, names[1], a_url) == 200
    assert await asyncio.to_thread(_get_from, names[0], b_url) == 200

    instance_a = str(views[0]["id"])
    pid = agents[0].record(instance_a)["handle"]["data"]["pid"]
    agents[0].kill()
    assert await asyncio.to_thread(_get_from, names[1], a_url) == 200
    agents[0].start()
    await agents[0].wait_ready()
    again = await _wait_running(agents[0], instance_a, lan.address(0))
    assert again["ip_address"] == views[0]["ip_address"]
    assert agents[0].record(instance_a)["handle"]["data"]["pid"] == pid
    assert "oci.started" not in agents[0].log_path.read_text()
    assert await asyncio.to_thread(_get_from, names[1], a_url) == 200


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
