"""Fixtures for the Firecracker driver's integration tests (root: TAPs, bridges, loop mounts).

- ``reflink_dir``: an XFS file system (reflink=1) on a loop device, per module, where the
  jail, the base images and the per-instance views live (this machine's ext4 has no reflink
  and its kernel no device-mapper).
- ``bridge``: a fresh Linux bridge with a unique name.
- ``fake_fc``: a driver configuration whose jailer is ``fake_jailer.py`` (validating fake API).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.bridges import linux_bridge
from tests.integration.runtime.firecracker import fakefc
from zeitwork.runtime.firecracker import FirecrackerConfig

HERE = Path(__file__).resolve().parent
BUSYBOX = Path("/bin/busybox")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    missing = []
    if shutil.which("mkfs.xfs") is None:
        missing.append("mkfs.xfs (xfsprogs)")
    if not BUSYBOX.is_file():
        missing.append("/bin/busybox (busybox-static)")
    if not fakefc.SPEC_PATH.is_file():
        missing.append(f"the API spec {fakefc.SPEC_PATH}")
    if missing:
        skip = pytest.mark.skip(reason="needs " + ", ".join(missing))
        for item in items:
            if str(HERE) in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="module")
def reflink_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop mount)")
    work = Path(tempfile.mkdtemp(prefix="zwfc-xfs-"))
    image = work / "fs.img"
    mount = work / "mnt"
    mount.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(2 * 1024 * 1024 * 1024)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def bridge() -> Iterator[str]:
    with linux_bridge("zwfb" + secrets.token_hex(4)) as name:
        yield name


def make_tree(root: Path) -> Path:
    """A small unpacked image: an app, /etc/passwd, a directory owned by uid 1000."""
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "data").mkdir()
    app = root / "bin" / "app"
    app.write_text("#!/bin/sh\necho hello from the app\n")
    app.chmod(0o755)
    (root / "bin" / "sh").symlink_to("/.zeitwork/busybox")
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/data:/bin/sh\n"
    )
    os.chown(root / "data", 1000, 1000)
    return root


@dataclass
class FakeFc:
    config: FirecrackerConfig
    record: Path
    behaviour_file: Path
    cgroup_root: Path

    def behave(self, **behaviour: Any) -> None:
        current = json.loads(self.behaviour_file.read_text())
        current.update(behaviour)
        self.behaviour_file.write_text(json.dumps(current))

    def entries(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]

    def api_calls(self) -> list[str]:
        return [
            f"{e['method']} {e['path']}"
            for e in self.entries()
            if "method" in e and e["method"] != "GET" and "rejected" not in e
        ]


@pytest.fixture
def fake_fc(reflink_dir: Path, tmp_path: Path) -> Iterator[FakeFc]:
    run = reflink_dir / ("t" + secrets.token_hex(4))
    run.mkdir()
    bindir = run / "bin"
    bindir.mkdir()
    firecracker = bindir / "firecracker"
    firecracker.write_bytes(b"not really firecracker\n")
    kernel = run / "vmlinux"
    kernel.write_bytes(b"\x7fELF fake kernel")
    kernel.chmod(0o644)
    record = tmp_path / "calls.jsonl"
    behaviour = tmp_path / "behaviour.json"
    cgroup_root = tmp_path / "cgroup"
    behaviour.write_text(json.dumps({"record": str(record), "cgroup_root": str(cgroup_root)}))
    jailer = bindir / "jailer"
    jailer.write_text(
        "#!/bin/sh\n"
        f"export FAKE_FC_BEHAVIOUR='{behaviour}'\n"
        f"exec '{sys.executable}' '{HERE / 'fake_jailer.py'}' \"$@\"\n"
    )
    jailer.chmod(jailer.stat().st_mode | stat.S_IXUSR)
    config = FirecrackerConfig(
        firecracker_bin=firecracker,
        jailer_bin=jailer,
        kernel=kernel,
        chroot_base=run / "jail",
        rootfs_dir=run / "rootfs",
        busybox=BUSYBOX,
        uid=10_000 + secrets.randbelow(1000),
        gid=10_000 + secrets.randbelow(1000),
        cgroup_version=1,
        cgroup_root=cgroup_root,
        tap_prefix="zt" + secrets.token_hex(2),
        rootfs_headroom_mib=16,
        boot_timeout=15.0,
    )
    try:
        yield FakeFc(
            config=config, record=record, behaviour_file=behaviour, cgroup_root=cgroup_root
        )
    finally:
        _kill_leftovers(record)
        _delete_taps(config.tap_prefix)
        shutil.rmtree(run, ignore_errors=True)


def _delete_taps(prefix: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if isinstance(name, str) and name.startswith(prefix):
                ipr.link("del", index=link["index"])


def _kill_leftovers(record: Path) -> None:
    if not record.exists():
        return
    for line in record.read_text().splitlines():
        entry = json.loads(line)
        if "vmm_pid" in entry:
            try:
                cmdline = Path(f"/proc/{entry['vmm_pid']}/cmdline").read_bytes()
            except OSError:
                continue
            if b"fake_jailer.py" in cmdline:
                os.kill(entry["vmm_pid"], 9)


@pytest.fixture
def gw_bridge() -> Iterator[tuple[str, str]]:
    """A bridge with a gateway address on a random /24: (name, "10.x.y")."""
    prefix = f"10.{random.randint(150, 250)}.{random.randint(0, 255)}"
    with linux_bridge("zwfg" + secrets.token_hex(4), gateway=f"{prefix}.1") as name:
        yield name, prefix


@pytest.fixture
def instance_netns(gw_bridge: tuple[str, str]) -> Iterator[tuple[Path, str]]:
    """A namespace like the agent prepares for an instance: veth ``eth0`` inside with the
    instance's address and a default route, its host end on the bridge. (path, address)"""
    bridge, prefix = gw_bridge
    name = "zwfn" + secrets.token_hex(4)
    host = "zwfh" + secrets.token_hex(4)
    address = f"{prefix}.5"
    for argv in (
        ["ip", "netns", "add", name],
        ["ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", name],
        ["ip", "link", "set", host, "master", bridge, "up"],
        ["ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0"],
        ["ip", "-n", name, "link", "set", "eth0", "up"],
        ["ip", "-n", name, "route", "add", "default", "via", f"{prefix}.1"],
    ):
        subprocess.run(argv, check=True, capture_output=True)
    try:
        yield Path("/var/run/netns") / name, address
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", host], check=False, capture_output=True)
