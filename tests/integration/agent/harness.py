"""Real node agents for tests: the agent process (``zeitwork node-agent``) with its own
data dir, bridge, subnet, NAT table and cgroup parent (random names), and a clean-up that
removes everything it could have left on the host."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.images import BuiltImage
from zeitwork.agent.network import NodeNetwork, netns
from zeitwork.images import ImageCache
from zeitwork.runtime.oci import OciDriver, RuncCli, cgroups

TOKEN = "agent-test-token-" + uuid.uuid4().hex


async def preload(data_dir: Path, image: BuiltImage) -> None:
    """Put ``image`` into the node's image cache as if it had been downloaded."""
    cache = await ImageCache.open(root=data_dir / "agent" / "images", max_bytes=1 << 30)

    async def fetch(dest: Path) -> None:
        shutil.copyfile(image.path, dest)

    await cache.ensure(image.digest, fetch, acquire=False)
    await cache.close()


@dataclass
class AgentHost:
    """Names and directories of one agent's world (unique per test)."""

    root: Path
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: str | None = field(
        default_factory=lambda: f"10.{random.randint(150, 250)}.{random.randint(0, 255)}.0/24"
    )
    extra_env: dict[str, str] = field(default_factory=dict)
    netns: str | None = None  # run the agent in this `ip netns` (a separate "host")
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None
    starts: int = 0
    # shared with other agents on this host (tests of ownership): a runc root's parent and
    # a cgroup parent; ``own_nft_table=False`` leaves the table to the agent's default
    shared_run_dir: Path | None = None
    shared_cgroup_parent: str | None = None
    own_nft_table: bool = True

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def run_dir(self) -> Path:
        return self.shared_run_dir or self.root / "run"

    @property
    def bridge(self) -> str:
        return f"zwt{self.suffix}"

    @property
    def nft_table(self) -> str:
        if not self.own_nft_table:
            from zeitwork.agent.settings import nft_table_for

            return nft_table_for(self.bridge)
        return f"zwt_{self.suffix}"

    @property
    def cgroup_parent(self) -> str:
        return self.shared_cgroup_parent or f"zwtest-{self.suffix}"

    @property
    def log_path(self) -> Path:
        return self.root / f"agent-{self.starts}.log"

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "PORT": "0",
            "HOST": "0.0.0.0",
            "ZEITWORK_DATA_DIR": str(self.data_dir),
            "ZEITWORK_RUN_DIR": str(self.run_dir),
            "ZEITWORK_RUNTIME": "oci",
            "ZEITWORK_BRIDGE": self.bridge,
            "ZEITWORK_NFT_TABLE": self.nft_table if self.own_nft_table else "",
            "ZEITWORK_CGROUP_PARENT": self.cgroup_parent,
            "ZEITWORK_AGENT_TOKEN": TOKEN,
            "ZEITWORK_STOP_GRACE": "1",
            "ZEITWORK_RESERVED_VCPU": "0",
            "ZEITWORK_RESERVED_MEMORY_MIB": "256",
            "ZEITWORK_RESERVED_DISK_MIB": "0",
            "LOG_LEVEL": "info",
        }
        if self.subnet is not None:  # else the operator allocates it
            env["ZEITWORK_NODE_SUBNET"] = self.subnet
        env.update(self.extra_env)
        return env

    def start(self, *args: str) -> None:
        self.starts += 1
        listen = self.data_dir / "agent" / "listen.json"
        listen.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "zeitwork", "node-agent", *args]
        if self.netns is not None:
            # the agent's network namespace only: it must share the host's mount namespace
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv, env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        listen = self.data_dir / "agent" / "listen.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"agent exited with {self.process.returncode}:\n{self.log_path.read_text()}"
                )
            if listen.exists():
                self.port = int(json.loads(listen.read_text())["port"])
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"agent not listening after {timeout}s:\n{self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: the agent dies without any chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    async def kill_host(self) -> None:
        """The whole host dies: SIGKILL the agent, then kill and remove its containers."""
        self.kill()
        driver = OciDriver(
            runc=RuncCli(root=self.run_dir / "runc"),
            state_dir=self.data_dir / "agent" / "oci",
            cgroup_parent=self.cgroup_parent,
        )
        await driver.recover([])

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def api_url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def client(self, host: str = "127.0.0.1") -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api_url(host),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10.0,
        )

    def record(self, instance_id: str) -> dict[str, Any]:
        path = self.data_dir / "agent" / "instances" / f"{instance_id}.json"
        value = json.loads(path.read_text())
        assert isinstance(value, dict)
        return value

    def allocated_subnet(self) -> str:
        """The subnet the operator gave this agent (kept in its data dir)."""
        path = self.data_dir / "agent" / "subnet.json"
        return str(json.loads(path.read_text())["subnet"])

    async def cleanup(self) -> None:
        """Remove every container, namespace, link, rule and cgroup this agent made."""
        self.kill()
        driver = OciDriver(
            runc=RuncCli(root=self.run_dir / "runc"),
            state_dir=self.data_dir / "agent" / "oci",
            cgroup_parent=self.cgroup_parent,
        )
        await driver.recover([])
        cgroups.remove(f"/{self.cgroup_parent}")
        namespaces = self.data_dir / "agent" / "network" / "netns"
        if self.netns is not None and namespaces.exists():
            for path in namespaces.iterdir():  # their links vanish with the host namespace
                netns.remove(path)
        if self.netns is None:
            network = NodeNetwork(
                bridge=self.bridge,
                subnet=self.subnet or self.allocated_subnet(),
                state_dir=self.data_dir / "agent" / "network",
                nft_table=self.nft_table,
            )
            await network.cleanup(keep=set())
            await network.teardown()


@contextlib.asynccontextmanager
async def agent_hosts(root: Path, prefix: str) -> AsyncIterator[Callable[..., AgentHost]]:
    """A factory of agent worlds (``AgentHost(**kwargs)``, each in ``root/<prefix><n>``); on
    exit every one it made is cleaned up."""
    made: list[AgentHost] = []

    def make(**kwargs: object) -> AgentHost:
        host = AgentHost(root=root / f"{prefix}{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(host)
        return host

    try:
        yield make
    finally:
        for host in made:
            await host.cleanup()


def instance_body(image: BuiltImage, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "image": {
            "id": str(uuid.uuid4()),
            "name": "busybox-httpd",
            "digest": image.digest,
            "size": image.size,
        },
        "resources": {"vcpu": 0.25, "memory": 64},
        "default_port": 8080,
        "environment_variables": {"GREETING": "hi"},
    }
    body.update(overrides)
    return body
