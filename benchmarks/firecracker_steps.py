"""Figures for the Firecracker driver's host-side steps on this machine (root needed).

- rootfs build once per digest (mkfs.ext4 -d + debugfs) for a real tree (this venv's lib/,
  about 290 MB in 12k files) and its size;
- per-instance copy-on-write view (FICLONE on a loop-mounted XFS) vs a full copy;
- TAP creation + bridge attach through pyroute2;
- a whole start against the validating fake (fake jailer process + API sequence), split into
  the API calls alone and the rest; stop + destroy.

Run: sudo .venv/bin/python benchmarks/firecracker_steps.py
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.runtime.firecracker.conftest import make_tree  # noqa: E402
from tests.kvm.support import loop_xfs  # noqa: E402

from zeitwork.runtime.base import InstanceSpec, NetworkAttachment, ProcessSpec  # noqa: E402
from zeitwork.runtime.firecracker import FirecrackerConfig, FirecrackerDriver  # noqa: E402
from zeitwork.runtime.firecracker.rootfs import RootfsStore  # noqa: E402
from zeitwork.runtime.firecracker.tap import create_tap, delete_tap  # noqa: E402

API_STEPS = (
    "logger",
    "metrics",
    "machine-config",
    "boot-source",
    "drive-rootfs",
    "drive-settings",
    "network-interface",
    "instance-start",
)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _bridge(action: str, name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        if action == "add":
            ipr.link("add", ifname=name, kind="bridge")
        elif ipr.link_lookup(ifname=name):
            ipr.link("del", ifname=name)


async def main() -> None:
    results: dict[str, object] = {}
    with loop_xfs(size=4 * 1024**3) as base:
        store = RootfsStore(directory=base / "rootfs", busybox=Path("/bin/busybox"))
        tree = ROOT / ".venv" / "lib"
        started = time.perf_counter()
        image = await store.ensure("sha256:" + hashlib.sha256(b"venv").hexdigest(), tree)
        results["rootfs_build_venv_lib"] = ms(time.perf_counter() - started)
        results["rootfs_image_apparent_mib"] = image.stat().st_size // 2**20

        views, copies = [], []
        for index in range(20):
            dest = base / f"view{index}.ext4"
            t = time.perf_counter()
            view = await store.make_view(image, dest, uid=10000, gid=10000)
            views.append(time.perf_counter() - t)
            await store.remove_view(view)
        for index in range(3):
            t = time.perf_counter()
            shutil.copyfile(image, base / f"copy{index}")
            copies.append(time.perf_counter() - t)
            (base / f"copy{index}").unlink()
        results["cow_view_reflink_p50"] = ms(statistics.median(views))
        results["cow_view_reflink_max"] = ms(max(views))
        results["full_copy_p50"] = ms(statistics.median(copies))

        bridge = "zwbb" + secrets.token_hex(3)
        await asyncio.to_thread(_bridge, "add", bridge)
        taps = []
        try:
            for index in range(20):
                name = f"zwbt{index:02d}{secrets.token_hex(2)}"
                t = time.perf_counter()
                await create_tap(name, bridge=bridge, uid=10000, gid=10000)
                taps.append(time.perf_counter() - t)
                await delete_tap(name)
            results["tap_create_p50"] = ms(statistics.median(taps))

            # Whole starts against the fake jailer + validating API.
            work = Path(tempfile.mkdtemp(prefix="zwbench-"))
            here = ROOT / "tests" / "integration" / "runtime" / "firecracker"
            bindir = base / "bin"
            bindir.mkdir()
            (bindir / "firecracker").write_bytes(b"fake")
            behaviour = work / "behaviour.json"
            behaviour.write_text(json.dumps({"cgroup_root": str(work / "cg")}))
            jailer = bindir / "jailer"
            jailer.write_text(
                f"#!/bin/sh\nexport FAKE_FC_BEHAVIOUR='{behaviour}'\n"
                f"exec '{sys.executable}' '{here / 'fake_jailer.py'}' \"$@\"\n"
            )
            jailer.chmod(0o755)
            kernel = base / "vmlinux"
            kernel.write_bytes(b"kernel")
            kernel.chmod(0o644)
            driver = FirecrackerDriver(
                config=FirecrackerConfig(
                    firecracker_bin=bindir / "firecracker",
                    jailer_bin=jailer,
                    kernel=kernel,
                    chroot_base=base / "jail",
                    rootfs_dir=base / "rootfs",
                    cgroup_version=1,
                    cgroup_root=work / "cg",
                    tap_prefix="zwbv",
                )
            )
            small = make_tree(work / "tree")
            totals, api, teardown = [], [], []
            for _ in range(10):
                spec = InstanceSpec(
                    instance_id=uuid.uuid4(),
                    image_digest="sha256:" + hashlib.sha256(b"small").hexdigest(),
                    rootfs=small,
                    process=ProcessSpec(argv=["/bin/app"], env={}),
                    vcpu=1,
                    memory_mib=128,
                    port=8080,
                    network=NetworkAttachment(
                        bridge=bridge, address="10.222.0.5", prefix_len=24, gateway="10.222.0.1"
                    ),
                )
                t = time.perf_counter()
                handle = await driver.start(spec)
                totals.append(time.perf_counter() - t)
                api.append(sum(driver.last_boot_timings[s] for s in API_STEPS))
                t = time.perf_counter()
                await driver.stop(handle, grace_seconds=5)
                await driver.destroy(handle)
                teardown.append(time.perf_counter() - t)
            await driver.aclose()
            results["start_vs_fake_total_p50"] = ms(statistics.median(totals))
            results["start_api_sequence_p50"] = ms(statistics.median(api))
            results["start_steps_last"] = {k: ms(v) for k, v in driver.last_boot_timings.items()}
            results["stop_and_destroy_p50"] = ms(statistics.median(teardown))
            shutil.rmtree(work, ignore_errors=True)
        finally:
            await asyncio.to_thread(_bridge, "del", bridge)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
