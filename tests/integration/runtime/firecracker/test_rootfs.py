"""Base images built with mkfs.ext4 -d and read back with debugfs; reflinked views."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.runtime.firecracker.conftest import BUSYBOX, make_tree
from zeitwork.core.errors import InvalidInput, RuntimeFailure
from zeitwork.runtime.firecracker import rootfs
from zeitwork.runtime.firecracker.rootfs import RootfsStore, detect_cow_method

pytestmark = pytest.mark.requires_root

DIGEST = "sha256:" + "ab" * 32


def debugfs(image: Path, command: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", command, str(image)], check=True, capture_output=True
    ).stdout


def test_pure_helpers() -> None:
    assert rootfs.image_name(DIGEST) == "sha256-" + "ab" * 32 + ".ext4"
    for bad in ["latest", "sha256:xyz", "sha256:" + "a" * 63, "../etc:" + "a" * 64]:
        with pytest.raises(InvalidInput):
            rootfs.image_name(bad)
    assert rootfs.image_size_mib(used_bytes=0, inodes=16384, headroom_mib=10) == 30
    assert rootfs.inode_count(10) == 16384 and rootfs.inode_count(100_000) == 201_024
    assert (
        rootfs.dm_snapshot_table(sectors=2048, origin="/dev/loop1", cow="/dev/loop2")
        == "0 2048 snapshot /dev/loop1 /dev/loop2 N 8"
    )
    script = rootfs.debugfs_script(busybox=Path("/bin/busybox"), init=Path("/tmp/i"))
    assert "write /bin/busybox /.zeitwork/busybox" in script
    assert "set_inode_field /zeitwork-init mode 0100755" in script


async def test_build_once_and_read_back(reflink_dir: Path, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree")
    store = RootfsStore(
        directory=reflink_dir / f"img-{os.getpid()}", busybox=BUSYBOX, headroom_mib=8
    )
    started = time.perf_counter()
    image = await store.ensure(DIGEST, tree)
    built = time.perf_counter() - started
    assert image == store.image_path(DIGEST)
    assert image.stat().st_mode & 0o777 == 0o444

    init = debugfs(image, "cat /zeitwork-init")
    package_init = importlib.resources.files("zeitwork.runtime.firecracker").joinpath(
        "zeitwork-init.sh"
    )
    assert init == package_init.read_bytes()
    assert init.startswith(b"#!/.zeitwork/busybox sh\n")
    assert debugfs(image, "cat /.zeitwork/busybox") == BUSYBOX.read_bytes()
    assert debugfs(image, "cat /bin/app") == (tree / "bin" / "app").read_bytes()
    listing = debugfs(image, "ls -l /").decode()
    for name in ("zeitwork-init", ".zeitwork", "bin", "etc", "data"):
        assert name in listing
    stat_init = debugfs(image, "stat /zeitwork-init").decode()
    assert "Mode:  0755" in stat_init and "User:     0" in stat_init
    assert "User:  1000" in debugfs(image, "stat /data").decode()
    subprocess.run(["e2fsck", "-fn", str(image)], check=True, capture_output=True)

    # Once per digest: a second call does not rebuild.
    mtime = image.stat().st_mtime_ns
    started = time.perf_counter()
    assert await store.ensure(DIGEST, tree) == image
    assert time.perf_counter() - started < built
    assert image.stat().st_mtime_ns == mtime
    assert not [p for p in image.parent.iterdir() if p.name.endswith(".tmp")]


async def test_build_failure_leaves_nothing(reflink_dir: Path, tmp_path: Path) -> None:
    store = RootfsStore(directory=reflink_dir / f"bad-{os.getpid()}", busybox=BUSYBOX)
    with pytest.raises(RuntimeFailure, match="does not exist"):
        await store.ensure(DIGEST, tmp_path / "missing")
    store = RootfsStore(
        directory=reflink_dir / f"bad2-{os.getpid()}", busybox=tmp_path / "no-busybox"
    )
    with pytest.raises(RuntimeFailure, match="busybox-static"):
        await store.ensure(DIGEST, make_tree(tmp_path / "tree"))
    store = RootfsStore(
        directory=reflink_dir / f"bad3-{os.getpid()}", busybox=BUSYBOX, mkfs="/bin/false"
    )
    with pytest.raises(RuntimeFailure, match="false failed"):
        await store.ensure(DIGEST, make_tree(tmp_path / "tree2"))
    assert list((reflink_dir / f"bad3-{os.getpid()}").iterdir()) == []


async def test_reflink_view_is_copy_on_write(reflink_dir: Path, tmp_path: Path) -> None:
    directory = reflink_dir / f"cow-{os.getpid()}"
    store = RootfsStore(directory=directory, busybox=BUSYBOX, headroom_mib=8)
    image = await store.ensure(DIGEST, make_tree(tmp_path / "tree"))
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    dest = directory / "view.ext4"
    started = time.perf_counter()
    view = await store.make_view(image, dest, uid=12345, gid=12346)
    elapsed = time.perf_counter() - started
    assert view.method == "reflink" and view.path == dest
    assert (dest.stat().st_uid, dest.stat().st_gid) == (12345, 12346)
    assert elapsed < 0.5
    with open(dest, "r+b") as fh:
        fh.seek(4096 * 100)
        fh.write(b"written by the instance")
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before
    await store.remove_view(view)
    assert not dest.exists()
    await store.remove_view(view)  # idempotent


def test_cow_detection(reflink_dir: Path, tmp_path: Path) -> None:
    method, reason = detect_cow_method(reflink_dir / "probe")
    assert method == "reflink", reason
    fstype = subprocess.run(
        ["stat", "-f", "-c", "%T", str(tmp_path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    method, reason = detect_cow_method(tmp_path)
    if fstype in ("ext2/ext3", "ext4", "tmpfs"):
        if rootfs.probe_device_mapper() is None:
            assert method == "dm-snapshot"
        else:
            assert method is None
            assert "reflink (FICLONE) is not supported" in reason
            assert "device-mapper" in reason


async def test_no_cow_method_fails_the_start_clearly(tmp_path: Path) -> None:
    if rootfs.probe_reflink(tmp_path) is None or rootfs.probe_device_mapper() is None:
        pytest.skip("this file system supports a copy-on-write method")
    store = RootfsStore(directory=tmp_path / "img", busybox=BUSYBOX, headroom_mib=8)
    image = await store.ensure(DIGEST, make_tree(tmp_path / "tree"))
    with pytest.raises(RuntimeFailure, match="no copy-on-write method"):
        await store.make_view(image, tmp_path / "view", uid=1, gid=1)
    assert not (tmp_path / "view").exists()
