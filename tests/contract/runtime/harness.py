"""Real building blocks for runtime tests: a busybox image tree, a node network on a bridge
with a unique name, HTTP probes. Shared by the contract, integration and e2e tests."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from zeitwork.agent.network import NodeNetwork
from zeitwork.runtime.base import InstanceSpec, ProcessSpec

BUSYBOX = shutil.which("busybox")
APPLETS = ("sh", "httpd", "echo", "cat", "sleep", "dd", "head", "tr", "ls", "id", "env", "true")


def build_busybox_tree(root: Path) -> Path:
    """A minimal image tree: static busybox, /etc/passwd with a non-root user, /www."""
    if BUSYBOX is None:
        raise RuntimeError("busybox (busybox-static) is not installed")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("hello from zeitwork\n")
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or path.name == "busybox" else 0o644)
    return root


def unique_suffix() -> str:
    return uuid.uuid4().hex[:6]


def random_subnet() -> str:
    return f"10.{random.randint(150, 250)}.{random.randint(0, 255)}.0/24"


@dataclass
class NetworkFixture:
    network: NodeNetwork
    attached: list[uuid.UUID] = field(default_factory=list)


def make_network(state_dir: Path) -> NodeNetwork:
    suffix = unique_suffix()
    return NodeNetwork(
        bridge=f"zwt{suffix}",
        subnet=random_subnet(),
        state_dir=state_dir,
        nft_table=f"zwt_{suffix}",
    )


def http_server_spec(
    *, instance_id: uuid.UUID, rootfs: Path, network: object, port: int = 8080, memory: int = 64
) -> InstanceSpec:
    from zeitwork.runtime.base import NetworkAttachment

    assert isinstance(network, NetworkAttachment)
    return InstanceSpec(
        instance_id=instance_id,
        image_digest="sha256:" + "0" * 64,
        rootfs=rootfs,
        process=ProcessSpec(
            argv=["sh", "-c", f"echo app-started-$GREETING; exec httpd -f -v -p {port} -h /www"],
            env={"GREETING": "hi"},
            cwd="/",
            user="1000:1000",
        ),
        vcpu=0.5,
        memory_mib=memory,
        port=port,
        network=network,
        pids_limit=64,
    )


def http_get(url: str, *, timeout: float = 1.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


async def wait_http(url: str, *, timeout: float = 10.0) -> tuple[int, str]:
    """Poll ``url`` until it answers, or fail after ``timeout`` seconds with the last error."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return await asyncio.to_thread(http_get, url, timeout=1.0)
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout}s: {last}")


async def wait_until(probe: object, *, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Await ``probe()`` (async, returns bool) until true or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await probe():  # type: ignore[operator]
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def stop_being_subreaper() -> None:
    """Undo ``become_subreaper`` for the test process, so that processes orphaned by other
    tests later in the session are re-parented to init as usual (not left as zombies here)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(36, 0, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER, off
