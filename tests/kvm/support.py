"""Whether real microVMs can run here, decided by probing (not hard-coded), and the driver
configuration for them. Used by ``tests/kvm`` and the driver contract suite.

Real microVMs need: ``FIRECRACKER_BIN``, ``JAILER_BIN`` and ``FIRECRACKER_KERNEL`` set to
existing files (``scripts/fetch-firecracker.sh`` downloads them), root, and a KVM that runs
a 64-bit test guest. The jail, base images and views need a reflink-capable file system
(XFS with reflink=1, btrfs): ``ZEITWORK_TEST_JAILER_BASE`` names one, otherwise a loop-mounted
XFS is made for the test (``loop_xfs``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from zeitwork.runtime.firecracker import FirecrackerConfig
from zeitwork.runtime.firecracker.kvm import probe_kvm

NOT_CONFIGURED = "firecracker binaries/kernel not configured"
CANNOT_BOOT = "microVMs cannot boot on this machine"


def _binaries() -> tuple[dict[str, Path] | None, str]:
    found: dict[str, Path] = {}
    problems = []
    for name in ("FIRECRACKER_BIN", "JAILER_BIN", "FIRECRACKER_KERNEL"):
        value = os.environ.get(name)
        if not value:
            problems.append(f"{name} is not set")
            continue
        path = Path(value)
        if not path.is_file():
            problems.append(f"{name}={value} does not exist")
        elif name != "FIRECRACKER_KERNEL" and not os.access(path, os.X_OK):
            problems.append(f"{name}={value} is not executable")
        found[name] = path
    if problems:
        return None, (
            f"{NOT_CONFIGURED} ({'; '.join(problems)}; scripts/fetch-firecracker.sh fetches them)"
        )
    return found, ""


def microvm_skip_reason() -> str | None:
    """None when a real microVM can be tried here, else why not."""
    if os.geteuid() != 0:
        return "needs root (jailer, TAP devices)"
    ok, detail = probe_kvm()
    if not ok:
        return f"{CANNOT_BOOT} ({detail})"
    binaries, reason = _binaries()
    if binaries is None:
        return reason
    return None


def config(base: Path, *, uid: int = 10_123, gid: int = 10_123) -> FirecrackerConfig:
    binaries, reason = _binaries()
    if binaries is None:
        raise RuntimeError(reason)
    return FirecrackerConfig(
        firecracker_bin=binaries["FIRECRACKER_BIN"],
        jailer_bin=binaries["JAILER_BIN"],
        kernel=binaries["FIRECRACKER_KERNEL"],
        chroot_base=base / "jail",
        rootfs_dir=base / "rootfs",
        uid=uid,
        gid=gid,
        tap_prefix="zk" + secrets.token_hex(2),
        rootfs_headroom_mib=32,
        boot_timeout=20.0,
    )


@contextlib.contextmanager
def loop_xfs(size: int = 2 * 1024**3) -> Iterator[Path]:
    """A reflink-capable directory: ``ZEITWORK_TEST_JAILER_BASE`` or a loop-mounted XFS."""
    configured = os.environ.get("ZEITWORK_TEST_JAILER_BASE")
    if configured:
        base = Path(configured) / ("t" + secrets.token_hex(4))
        base.mkdir(parents=True)
        try:
            yield base
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    work = Path(tempfile.mkdtemp(prefix="zwkvm-"))
    image, mount = work / "fs.img", work / "mnt"
    mount.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(size)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def reflink_base_for_process() -> Path:
    """A reflink-capable directory that lives until this test process exits (for factories
    that have no teardown of their own, like the driver contract suite's)."""
    manager = loop_xfs()
    base = manager.__enter__()
    atexit.register(manager.__exit__, None, None, None)
    return base
