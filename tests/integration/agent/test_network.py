"""The node network for real: instances reach each other and the outside, the host reaches
them, but they cannot open connections to services on the node itself."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract.runtime.harness import (
    build_busybox_tree,
    http_server_spec,
    make_network,
    wait_http,
    wait_until,
)
from zeitwork.agent.network import NodeNetwork
from zeitwork.agent.network.links import links_with_prefix
from zeitwork.runtime.base import Phase, ProcessSpec
from zeitwork.runtime.oci import OciDriver, RuncCli, become_subreaper, cgroups

pytestmark = [pytest.mark.requires_root]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[NodeNetwork, OciDriver, Path]]:
    become_subreaper()
    network = make_network(tmp_path / "net")
    await network.setup()
    parent = f"zwtest-{uuid.uuid4().hex[:6]}"
    driver = OciDriver(
        runc=RuncCli(root=tmp_path / "runc"), state_dir=tmp_path / "oci", cgroup_parent=parent
    )
    try:
        yield network, driver, build_busybox_tree(tmp_path / "image")
    finally:
        await driver.recover([])
        cgroups.remove(f"/{parent}")
        await network.cleanup(keep=set())
        await network.teardown()


async def _run_script(
    network: NodeNetwork, driver: OciDriver, tree: Path, script: str
) -> list[str]:
    instance_id = uuid.uuid4()
    spec = http_server_spec(
        instance_id=instance_id, rootfs=tree, network=await network.attach(instance_id)
    )
    spec = dataclasses.replace(
        spec, process=ProcessSpec(argv=["sh", "-c", script], env={}, user="1000:1000")
    )
    handle = await driver.start(spec)

    async def exited() -> bool:
        return (await driver.inspect(handle)).phase is Phase.EXITED

    await wait_until(exited, timeout=15)
    return [line async for line in driver.logs(handle, tail=50)]


async def test_instances_reach_each_other_but_not_the_node(
    world: tuple[NodeNetwork, OciDriver, Path],
) -> None:
    network, driver, tree = world
    connections: list[str] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(str(writer.get_extra_info("peername")))
        writer.close()

    node_service = await asyncio.start_server(on_connect, "0.0.0.0", 0)
    port = node_service.sockets[0].getsockname()[1]
    try:
        server_id = uuid.uuid4()
        server = http_server_spec(
            instance_id=server_id, rootfs=tree, network=await network.attach(server_id)
        )
        await driver.start(server)
        await wait_http(f"http://{server.network.address}:8080/")  # the host reaches it

        lines = await _run_script(
            network,
            driver,
            tree,
            f"/bin/busybox nc -w 2 {server.network.address} 8080 </dev/null"
            " && echo peer-reached || echo peer-blocked; "
            f"/bin/busybox nc -w 2 {network.gateway} {port} </dev/null"
            " && echo node-reached || echo node-blocked",
        )
        assert "peer-reached" in lines
        assert "node-blocked" in lines
        assert connections == []
    finally:
        node_service.close()
        await node_service.wait_closed()


async def test_a_subnet_overlapping_the_hosts_networks_is_refused(
    world: tuple[NodeNetwork, OciDriver, Path], tmp_path: Path
) -> None:
    from zeitwork.core.errors import RuntimeFailure

    existing, _, _ = world
    clash = NodeNetwork(
        bridge=f"zwt{uuid.uuid4().hex[:6]}",
        subnet=existing.subnet,
        state_dir=tmp_path / "clash",
        nft_table=f"zwt_{uuid.uuid4().hex[:6]}",
    )
    with pytest.raises(RuntimeFailure, match="overlaps the host's"):
        await clash.setup()
    assert clash.bridge not in await asyncio.to_thread(links_with_prefix, "zwt")


async def test_one_unroutable_peer_does_not_keep_the_others_out(
    world: tuple[NodeNetwork, OciDriver, Path],
) -> None:
    import ipaddress

    from zeitwork.agent.network.node import PeerRoute
    from zeitwork.core.errors import RuntimeFailure

    network, _, _ = world
    on_link = str(ipaddress.ip_network(network.subnet)[200])  # next hop on the node bridge
    third = uuid.uuid4().int % 200 + 20
    bad = PeerRoute(subnet=f"10.251.{third}.0/24", via="203.0.113.7")  # not on any link
    good = PeerRoute(subnet=f"10.252.{third}.0/24", via=on_link)
    with pytest.raises(RuntimeFailure, match=r"10\.251\."):
        await network.converge_peers([bad, good])
    installed = {r.subnet: r.via for r in network.installed_peers()}
    assert installed.get(good.subnet) == on_link
    assert bad.subnet not in installed
