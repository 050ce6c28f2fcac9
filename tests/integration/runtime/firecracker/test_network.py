"""The guest's link to the node bridge, checked with real frames: the test opens the TAP as
firecracker would and sends an ARP request from the guest's MAC and address; the bridge's
gateway address must answer through the TAP. Both layouts: the agent's instance namespace
(tap0 - br0 - veth - node bridge, firecracker jailed into the namespace) and a TAP directly
on the node bridge."""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import ipaddress
import os
import select
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.integration.runtime.firecracker.conftest import FakeFc, make_tree
from zeitwork.runtime.base import InstanceSpec, NetworkAttachment, Phase, ProcessSpec
from zeitwork.runtime.firecracker import FirecrackerDriver, guest

pytestmark = pytest.mark.requires_root

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000
_libc = ctypes.CDLL(None, use_errno=True)


def _arp_roundtrip(
    tap: str, netns: Path | None, mac: str, address: str, gateway: str, attempts: int = 3
) -> bool:
    """Send an ARP who-has for ``gateway`` into ``tap`` (as the guest); True on a reply."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if netns is not None:
            target = os.open(netns, os.O_RDONLY)
            assert _libc.setns(target, 0x40000000) == 0
            os.close(target)
        fd = os.open("/dev/net/tun", os.O_RDWR)
    finally:
        if netns is not None:
            assert _libc.setns(original, 0x40000000) == 0
        os.close(original)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
        src = bytes.fromhex(mac.replace(":", ""))
        spa = ipaddress.IPv4Address(address).packed
        tpa = ipaddress.IPv4Address(gateway).packed
        frame = (
            b"\xff" * 6
            + src
            + b"\x08\x06"
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + src
            + spa
            + b"\x00" * 6
            + tpa
        )
        for _ in range(attempts):
            os.write(fd, frame)
            for _ in range(20):
                ready, _, _ = select.select([fd], [], [], 0.5)
                if not ready:
                    break
                reply = os.read(fd, 2048)
                if (
                    reply[12:14] == b"\x08\x06"
                    and struct.unpack("!H", reply[20:22])[0] == 2
                    and reply[28:32] == tpa
                    and reply[0:6] == src
                ):
                    return True
        return False
    finally:
        os.close(fd)


def _spec(tree: Path, bridge: str, address: str, gateway: str, netns: Path | None) -> InstanceSpec:
    return InstanceSpec(
        instance_id=uuid.uuid4(),
        image_digest="sha256:" + hashlib.sha256(str(tree).encode()).hexdigest(),
        rootfs=tree,
        process=ProcessSpec(argv=["/bin/app"], env={}),
        vcpu=1,
        memory_mib=128,
        port=8080,
        network=NetworkAttachment(
            bridge=bridge,
            address=address,
            prefix_len=24,
            gateway=gateway,
            netns=str(netns) if netns else None,
        ),
    )


def _ns_links(netns: Path) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        ["ip", "-n", netns.name, "-j", "-d", "addr", "show"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    import json

    return {link["ifname"]: link for link in json.loads(out)}


async def test_in_the_instance_namespace(
    fake_fc: FakeFc,
    tmp_path: Path,
    gw_bridge: tuple[str, str],
    instance_netns: tuple[Path, str],
) -> None:
    import asyncio

    bridge, prefix = gw_bridge
    netns, address = instance_netns
    driver = FirecrackerDriver(config=fake_fc.config)
    spec = _spec(make_tree(tmp_path / "tree"), bridge, address, f"{prefix}.1", netns)
    handle = await driver.start(spec)
    try:
        assert handle.data["tap"] == "tap0" and handle.data["netns"] == str(netns)
        jailer_argv = next(e["jailer"] for e in fake_fc.entries() if "jailer" in e)
        assert jailer_argv[jailer_argv.index("--netns") + 1] == str(netns)
        links = _ns_links(netns)
        assert links["tap0"]["master"] == "br0" and links["eth0"]["master"] == "br0"
        assert not [a for a in links["eth0"]["addr_info"] if a["family"] == "inet"]
        # The fake VMM found tap0 in its own namespace (it was jailed into it) and started.
        assert (await driver.inspect(handle)).phase is Phase.RUNNING
        mac = guest.guest_mac(spec.instance_id)
        assert await asyncio.to_thread(_arp_roundtrip, "tap0", netns, mac, address, f"{prefix}.1")
        assert not Path(f"/sys/class/net/{guest.tap_name(spec.instance_id)}").exists()
    finally:
        await driver.destroy(handle)
        await driver.aclose()
    links = _ns_links(netns)
    assert "tap0" not in links and "br0" not in links and "eth0" in links


async def test_on_the_node_bridge(
    fake_fc: FakeFc, tmp_path: Path, gw_bridge: tuple[str, str]
) -> None:
    import asyncio

    bridge, prefix = gw_bridge
    driver = FirecrackerDriver(config=fake_fc.config)
    spec = _spec(make_tree(tmp_path / "tree"), bridge, f"{prefix}.9", f"{prefix}.1", None)
    handle = await driver.start(spec)
    try:
        tap = str(handle.data["tap"])
        assert "--netns" not in next(e["jailer"] for e in fake_fc.entries() if "jailer" in e)
        mac = guest.guest_mac(spec.instance_id)
        assert await asyncio.to_thread(_arp_roundtrip, tap, None, mac, f"{prefix}.9", f"{prefix}.1")
        # A frame from a different MAC/IP pair gets no answer for another address.
        assert not await asyncio.to_thread(
            _arp_roundtrip, tap, None, mac, f"{prefix}.9", f"{prefix}.77", 1
        )
    finally:
        await driver.destroy(handle)
        await driver.aclose()
