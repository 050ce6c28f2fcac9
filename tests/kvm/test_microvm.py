"""``make test-kvm``: boot a real Firecracker microVM from the real binaries and get HTTP 200
from a busybox httpd inside it. Skips, saying why, where that cannot work (see support.py)."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bridges import linux_bridge
from tests.kvm import support
from zeitwork.runtime.base import InstanceSpec, NetworkAttachment, Phase, ProcessSpec
from zeitwork.runtime.firecracker import FirecrackerDriver

pytestmark = [pytest.mark.requires_kvm, pytest.mark.requires_root]

SKIP = support.microvm_skip_reason()


def _tree(root: Path) -> Path:
    busybox = shutil.which("busybox")
    assert busybox is not None, "busybox-static is not installed"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "httpd", "echo"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n")
    (root / "www").mkdir()
    (root / "www" / "index.html").write_text("hello from a microVM\n")
    return root


@pytest.fixture
def bridge() -> Iterator[tuple[str, str]]:
    subnet = f"10.{random.randint(150, 250)}.{random.randint(0, 255)}"
    with linux_bridge("zwkb" + secrets.token_hex(3), gateway=f"{subnet}.1") as name:
        yield name, subnet


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=1.0) as response:
        return int(response.status)


@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
async def test_real_microvm_serves_http(tmp_path: Path, bridge: tuple[str, str]) -> None:
    name, subnet = bridge
    with support.loop_xfs() as base:
        driver = FirecrackerDriver(config=support.config(base))
        spec = InstanceSpec(
            instance_id=uuid.uuid4(),
            image_digest="sha256:" + secrets.token_hex(32),
            rootfs=_tree(tmp_path / "tree"),
            process=ProcessSpec(
                argv=["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"],
                env={"PATH": "/bin"},
                user="1000:1000",
            ),
            vcpu=1,
            memory_mib=128,
            port=8080,
            network=NetworkAttachment(
                bridge=name, address=f"{subnet}.5", prefix_len=24, gateway=f"{subnet}.1"
            ),
        )
        started = time.monotonic()
        handle = await driver.start(spec)
        try:
            deadline = started + 20
            status, last = 0, "no answer"
            while time.monotonic() < deadline:
                try:
                    status = await asyncio.to_thread(_get, f"http://{subnet}.5:8080/")
                    break
                except (urllib.error.URLError, OSError) as exc:
                    last = str(exc)
                    await asyncio.sleep(0.05)
            console = "\n".join([line async for line in driver.logs(handle, tail=40)])
            assert status == 200, f"no HTTP 200 from the microVM ({last}); console:\n{console}"
            print(f"microVM: start to first HTTP 200 in {time.monotonic() - started:.3f}s")
            assert (await driver.inspect(handle)).phase is Phase.RUNNING
            stopped = await driver.stop(handle, grace_seconds=5)
            assert stopped.phase is Phase.EXITED
        finally:
            await driver.destroy(handle)
            await driver.aclose()


def test_the_skip_decision_is_a_probe() -> None:
    """Without the env vars the reason names them; the KVM probe really ran a guest."""
    saved = {k: os.environ.pop(k, None) for k in ("FIRECRACKER_BIN", "JAILER_BIN")}
    try:
        reason = support.microvm_skip_reason()
    finally:
        for key, value in saved.items():
            if value is not None:
                os.environ[key] = value
    assert reason is not None
    assert "FIRECRACKER_BIN is not set" in reason or support.CANNOT_BOOT in reason
