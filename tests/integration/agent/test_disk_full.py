"""A full disk fails a start with a clear reason and leaves nothing behind."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.contract.runtime.harness import build_busybox_tree, http_server_spec, make_network
from zeitwork.agent.network import NodeNetwork
from zeitwork.core.errors import RuntimeFailure
from zeitwork.runtime.oci import OciDriver, RuncCli, cgroups

pytestmark = [pytest.mark.requires_root]
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled up."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    if _libc.mount(b"tmpfs", str(mountpoint).encode(), b"tmpfs", 0, b"size=1m") != 0:
        pytest.skip(f"cannot mount a tmpfs: {os.strerror(ctypes.get_errno())}")
    try:
        (mountpoint / "oci").mkdir()
        fd = os.open(mountpoint / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while os.write(fd, b"\0" * 4096) > 0:
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        yield mountpoint
    finally:
        _libc.umount2(str(mountpoint).encode(), 2)


@pytest.fixture
async def network(tmp_path: Path) -> AsyncIterator[NodeNetwork]:
    made = make_network(tmp_path / "net")
    await made.setup()
    try:
        yield made
    finally:
        await made.cleanup(keep=set())
        await made.teardown()


async def test_start_on_a_full_disk_fails_clearly(
    full_disk: Path, network: NodeNetwork, tmp_path: Path
) -> None:
    tree = build_busybox_tree(tmp_path / "image")
    parent = f"zwtest-{uuid.uuid4().hex[:6]}"
    driver = OciDriver(
        runc=RuncCli(root=tmp_path / "runc"), state_dir=full_disk / "oci", cgroup_parent=parent
    )
    instance_id = uuid.uuid4()
    spec = http_server_spec(
        instance_id=instance_id, rootfs=tree, network=await network.attach(instance_id)
    )
    try:
        with pytest.raises(RuntimeFailure) as caught:
            await driver.start(spec)
        assert "no space left on device" in caught.value.detail
        assert not (full_disk / "oci" / driver.container_id(instance_id)).exists()
        assert (await driver.recover([])).cleaned == []
    finally:
        await driver.recover([])
        cgroups.remove(f"/{parent}")
