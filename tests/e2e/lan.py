"""Two (or more) "hosts" on one machine for multi-node tests: each host is an ``ip netns``
with one interface on a shared LAN bridge in the root namespace. The test's own set-up uses
the ``ip`` command (the agents themselves use netlink)."""

from __future__ import annotations

import random
import subprocess
import uuid
from dataclasses import dataclass, field


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Lan:
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    third: int = field(default_factory=lambda: random.randint(0, 250))
    hosts: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"zwlan{self.suffix}"

    def address(self, index: int) -> str:
        return f"192.168.{self.third}.{index + 2}"

    @property
    def gateway(self) -> str:
        return f"192.168.{self.third}.1"

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self) -> str:
        index = len(self.hosts)
        name = f"zwh{index}{self.suffix}"
        ip("netns", "add", name)
        self.hosts.append(name)
        outside = f"zwl{index}{self.suffix}"
        ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("link", "set", outside, "master", self.bridge, "up")
        ip("-n", name, "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
        ip("-n", name, "link", "set", "eth0", "up")
        ip("-n", name, "link", "set", "lo", "up")
        ip("-n", name, "route", "add", "default", "via", self.gateway)
        return name

    def route_from_root(self, subnet: str, via: str) -> None:
        ip("route", "replace", subnet, "via", via)
        self.routes.append(subnet)

    def down(self) -> None:
        for subnet in self.routes:
            subprocess.run(["ip", "route", "del", subnet], check=False, capture_output=True)
        for name in self.hosts:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
