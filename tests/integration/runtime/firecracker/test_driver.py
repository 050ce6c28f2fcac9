"""The driver boots against the validating fake through a real (fake) jailer process, with a
real TAP on a real bridge, a real ext4 rootfs and a real reflinked view."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.runtime.firecracker.conftest import FakeFc, make_tree
from zeitwork.core.errors import RuntimeFailure
from zeitwork.runtime.base import (
    Handle,
    InstanceSpec,
    NetworkAttachment,
    Phase,
    ProcessSpec,
)
from zeitwork.runtime.firecracker import FirecrackerDriver, guest

pytestmark = pytest.mark.requires_root

EXPECTED_CALLS = [
    "PUT /logger",
    "PUT /metrics",
    "PUT /machine-config",
    "PUT /boot-source",
    "PUT /drives/rootfs",
    "PUT /drives/settings",
    "PUT /network-interfaces/eth0",
    "PUT /actions",
]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


def _spec(tree: Path, bridge: str, **overrides: object) -> InstanceSpec:
    digest = "sha256:" + hashlib.sha256(str(tree).encode()).hexdigest()
    values: dict[str, object] = {
        "instance_id": uuid.uuid4(),
        "image_digest": digest,
        "rootfs": tree,
        "process": ProcessSpec(
            argv=["/bin/app", "--port", "8080"], env={"PORT": "8080"}, cwd="/", user="1000:1000"
        ),
        "vcpu": 1.5,
        "memory_mib": 256,
        "port": 8080,
        "network": NetworkAttachment(
            bridge=bridge, address="10.201.0.5", prefix_len=24, gateway="10.201.0.1"
        ),
    }
    values.update(overrides)
    return InstanceSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
async def driver(fake_fc: FakeFc) -> AsyncIterator[FirecrackerDriver]:
    drv = FirecrackerDriver(config=fake_fc.config)
    yield drv
    await drv.aclose()


def _link(name: str) -> dict[str, object] | None:
    """The link as sysfs shows it (pyroute2's sync API cannot run inside an event loop)."""
    base = Path("/sys/class/net") / name
    if not base.exists():
        return None
    master = base / "master"
    return {
        "master": os.path.basename(os.readlink(master)) if master.exists() else None,
        "state": (base / "operstate").read_text().strip(),
    }


async def _eventually(probe, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_boot_sequence_against_the_spec(
    driver: FirecrackerDriver, fake_fc: FakeFc, tree: Path, bridge: str
) -> None:
    spec = _spec(tree, bridge)
    image = await driver.prepare_image(spec.image_digest, tree)  # at pull time, optional
    handle = await driver.start(spec)
    vm_id = str(spec.instance_id)
    cfg = fake_fc.config
    assert driver_image(fake_fc, spec) == image

    # The exact call order, every call accepted by the spec-validating fake.
    assert fake_fc.api_calls() == EXPECTED_CALLS
    assert not [e for e in fake_fc.entries() if "rejected" in e]
    bodies = {f"{e['method']} {e['path']}": e["body"] for e in fake_fc.entries() if "body" in e}
    assert bodies["PUT /machine-config"] == {"vcpu_count": 2, "mem_size_mib": 256, "smt": False}
    assert bodies["PUT /boot-source"] == {
        "kernel_image_path": "/vmlinux",
        "boot_args": "console=ttyS0 reboot=k panic=1 pci=off "
        "ip=10.201.0.5::10.201.0.1:255.255.255.0::eth0:off init=/zeitwork-init quiet",
    }
    assert bodies["PUT /drives/rootfs"] == {
        "drive_id": "rootfs",
        "path_on_host": "/rootfs.ext4",
        "is_root_device": True,
        "is_read_only": False,
    }
    assert bodies["PUT /network-interfaces/eth0"] == {
        "iface_id": "eth0",
        "host_dev_name": handle.data["tap"],
        "guest_mac": guest.guest_mac(spec.instance_id),
    }
    assert bodies["PUT /actions"] == {"action_type": "InstanceStart"}

    # The exact jailer argv (what the pure builder makes is what ran).
    jailer_argv = next(e["jailer"] for e in fake_fc.entries() if "jailer" in e)
    assert (
        jailer_argv
        == driver.jailer_argv(
            vm_id,
            [
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "150000"),
                ("memory.limit_in_bytes", str((256 + 64) * 1024 * 1024)),
            ],
        )[1:]
    )

    # Host side: TAP on the bridge owned by the jail's uid, jail populated, view is a reflink.
    tap = str(handle.data["tap"])
    assert tap.startswith(cfg.tap_prefix) and len(tap) == 15
    link = _link(tap)
    assert link is not None and link["master"] == bridge
    assert Path(f"/sys/class/net/{tap}/owner").read_text().strip() == str(cfg.uid)
    root = Path(str(handle.data["jail"])) / "root"
    assert (root / "vmlinux").stat().st_ino == cfg.kernel.stat().st_ino  # hard link, no copy
    view = root / "rootfs.ext4"
    assert view.stat().st_uid == cfg.uid
    assert handle.data["view"]["method"] == "reflink"
    settings = (root / "settings.img").read_bytes()
    assert len(settings) % 512 == 0 and b" -- /bin/app --port 8080\n" in settings
    for cgroup in handle.data["cgroups"]:
        assert Path(cgroup).is_dir()

    status = await driver.inspect(handle)
    assert status.phase is Phase.RUNNING and status.pid == handle.data["pid"]

    # The logger and metrics FIFOs are read.
    await _eventually(lambda: driver.telemetry.latest_metrics(vm_id) is not None)
    lines = [line async for line in driver.logs(handle, tail=10)]
    assert "fake-app: listening" in lines

    # Handles survive JSON (the agent persists them).
    restored = Handle(
        instance_id=handle.instance_id,
        driver="firecracker",
        data=json.loads(json.dumps(dict(handle.data))),
    )
    stopped = await driver.stop(restored, grace_seconds=5)
    assert stopped.phase is Phase.EXITED and stopped.exit_code == 0
    assert "PUT /actions" in fake_fc.api_calls()[-1]

    await driver.destroy(restored)
    assert _link(tap) is None
    assert not Path(str(handle.data["jail"])).exists()
    for cgroup in handle.data["cgroups"]:
        assert not Path(cgroup).exists()
    assert (await driver.inspect(restored)).phase is Phase.MISSING
    await driver.destroy(restored)  # idempotent


@pytest.mark.parametrize(
    ("fail", "step"),
    [
        ("PUT /network-interfaces/eth0", "network-interface"),
        ("PUT /actions", "instance-start"),
        ("PUT /boot-source", "boot-source"),
    ],
)
async def test_a_failed_step_undoes_every_earlier_step(
    driver: FirecrackerDriver, fake_fc: FakeFc, tree: Path, bridge: str, fail: str, step: str
) -> None:
    fake_fc.behave(fail={fail: "injected failure"})
    spec = _spec(tree, bridge)
    with pytest.raises(RuntimeFailure) as caught:
        await driver.start(spec)
    assert caught.value.detail == (
        f"starting microVM failed at step {step}: firecracker {fail} failed: injected failure"
    )
    assert caught.value.extra["step"] == step
    vm_id = str(spec.instance_id)
    tap = guest.tap_name(spec.instance_id, fake_fc.config.tap_prefix)
    assert _link(tap) is None
    assert not (fake_fc.config.chroot_base / "firecracker" / vm_id).exists()
    assert not any(p.name == vm_id for p in fake_fc.cgroup_root.rglob("*"))
    vmm_pid = next(e["vmm_pid"] for e in fake_fc.entries() if "vmm_pid" in e)
    await _eventually(lambda: not _alive(vmm_pid))
    # The base image stays for the next start; only the view went with the jail.
    assert driver_image(fake_fc, spec).is_file()


def driver_image(fake_fc: FakeFc, spec: InstanceSpec) -> Path:
    return fake_fc.config.rootfs_dir / (spec.image_digest.replace(":", "-") + ".ext4")


def _add_lookalike(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


async def test_a_missing_bridge_fails_at_the_tap_step(
    driver: FirecrackerDriver, fake_fc: FakeFc, tree: Path
) -> None:
    spec = _spec(tree, "zwnobridge0")
    with pytest.raises(RuntimeFailure, match=r"at step tap: .*zwnobridge0 does not exist"):
        await driver.start(spec)
    assert not (fake_fc.config.chroot_base / "firecracker" / str(spec.instance_id)).exists()
    assert fake_fc.entries() == []  # the jailer never ran


async def test_stop_kills_a_guest_that_ignores_ctrl_alt_del(
    driver: FirecrackerDriver, fake_fc: FakeFc, tree: Path, bridge: str
) -> None:
    fake_fc.behave(ignore_ctrl_alt_del=True)
    handle = await driver.start(_spec(tree, bridge))
    loop = asyncio.get_running_loop()
    started = loop.time()
    status = await driver.stop(handle, grace_seconds=0.3)
    assert loop.time() - started >= 0.3
    assert status.phase is Phase.EXITED and status.exit_code is None
    assert not _alive(int(handle.data["pid"]))
    await driver.destroy(handle)


async def test_starting_twice_is_refused_while_running(
    driver: FirecrackerDriver, fake_fc: FakeFc, tree: Path, bridge: str
) -> None:
    spec = _spec(tree, bridge)
    handle = await driver.start(spec)
    with pytest.raises(RuntimeFailure, match="already running"):
        await driver.start(spec)
    assert (
        await driver.inspect(handle)
    ).phase is Phase.RUNNING  # the failed start undid nothing of it
    await driver.destroy(handle)


async def test_recover_readopts_live_vms_and_cleans_strays(
    fake_fc: FakeFc, tree: Path, bridge: str
) -> None:
    first = FirecrackerDriver(config=fake_fc.config)
    kept = await first.start(_spec(tree, bridge))
    stray = await first.start(_spec(tree, bridge))
    dead = await first.start(_spec(tree, bridge))
    await first.stop(dead, grace_seconds=5)
    await first.aclose()  # the agent goes away; the VMs keep running

    # A non-TAP link that merely shares the prefix and length is not ours to remove.
    lookalike = fake_fc.config.tap_prefix + "f" * (15 - len(fake_fc.config.tap_prefix))
    await asyncio.to_thread(_add_lookalike, lookalike)

    second = FirecrackerDriver(config=fake_fc.config)
    try:
        recovered = await second.recover([kept, dead])
        assert _link(lookalike) is not None
        assert [h.instance_id for h in recovered.running] == [kept.instance_id]
        assert (await second.inspect(kept)).phase is Phase.RUNNING
        assert any(str(dead.instance_id) in c for c in recovered.cleaned)
        assert any(str(stray.instance_id) in c for c in recovered.cleaned)
        assert any(str(stray.data["tap"]) in c for c in recovered.cleaned)
        assert not _alive(int(stray.data["pid"]))
        assert _link(str(stray.data["tap"])) is None and _link(str(dead.data["tap"])) is None
        assert _link(str(kept.data["tap"])) is not None
        again = await second.recover([kept])
        assert [h.instance_id for h in again.running] == [kept.instance_id]
        assert again.cleaned == []
        await second.destroy(kept)
    finally:
        await second.aclose()
    assert os.listdir(fake_fc.config.chroot_base / "firecracker") == []


async def test_an_unreadable_kernel_is_copied_for_the_jail_user(
    fake_fc: FakeFc, tree: Path, bridge: str
) -> None:
    fake_fc.config.kernel.chmod(0o600)
    driver = FirecrackerDriver(config=fake_fc.config)
    handle = await driver.start(_spec(tree, bridge))
    kernel = Path(str(handle.data["jail"])) / "root" / "vmlinux"
    assert kernel.stat().st_ino != fake_fc.config.kernel.stat().st_ino
    assert kernel.stat().st_uid == fake_fc.config.uid
    assert kernel.read_bytes() == fake_fc.config.kernel.read_bytes()
    await driver.destroy(handle)
    await driver.aclose()


async def test_logs_follow_and_rotation(fake_fc: FakeFc, tree: Path, bridge: str) -> None:
    config = dataclasses.replace(fake_fc.config, console_max_bytes=4096, console_keep=2)
    driver = FirecrackerDriver(config=config)
    handle = await driver.start(_spec(tree, bridge))
    console = Path(str(handle.data["console"]))
    with open(console, "a") as fh:  # what the guest would print on its serial console
        for index in range(400):
            fh.write(f"app line {index}\r\n")
    await driver.housekeeping([handle])
    assert console.with_name("console.log.1").exists()
    assert console.stat().st_size == 0
    tail = [line async for line in driver.logs(handle, tail=3)]
    assert tail == ["app line 397", "app line 398", "app line 399"]

    follower = driver.logs(handle, tail=0, follow=True)
    with open(console, "a") as fh:
        fh.write("after rotation\r\n")
    assert await asyncio.wait_for(anext(follower), 5) == "after rotation"
    await driver.stop(handle, grace_seconds=5)
    rest = [line async for line in follower]  # ends once the VM is gone
    assert "zeitwork-init: exit 0" in rest
    await driver.destroy(handle)
    await driver.aclose()
