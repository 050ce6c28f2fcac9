"""The device-mapper view's commands and its undo, with stand-in losetup/dmsetup (this
kernel has no device-mapper, so the success path is only exercised on hosts that have it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.core.errors import RuntimeFailure
from zeitwork.runtime.firecracker.rootfs import CowView, RootfsStore


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    for name, out in (("losetup", "/dev/loop42"), ("dmsetup", "")):
        script = bindir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\necho "{out}"\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    return log


async def test_dm_view_undoes_everything_when_the_device_does_not_appear(
    tmp_path: Path, tools: Path
) -> None:
    store = RootfsStore(directory=tmp_path, busybox=Path("/bin/busybox"), cow_method="dm-snapshot")
    image = tmp_path / "base.ext4"
    image.write_bytes(b"\0" * 1024 * 1024)
    jail = tmp_path / "jail" / "vm-1" / "root"
    jail.mkdir(parents=True)
    dest = jail / "rootfs.ext4"
    with pytest.raises(RuntimeFailure, match="snapshot zw-vm-1 is not usable"):
        await store.make_view(image, dest, uid=1, gid=1)
    calls = tools.read_text().splitlines()
    assert calls == [
        f"losetup --find --show --read-only {image}",
        f"losetup --find --show {jail / 'rootfs.cow'}",
        "dmsetup create zw-vm-1 --table 0 2048 snapshot /dev/loop42 /dev/loop42 N 8",
        "dmsetup remove zw-vm-1",
        "losetup -d /dev/loop42",
    ]
    assert not dest.exists() and not (jail / "rootfs.cow").exists()


async def test_remove_view_is_idempotent(tmp_path: Path, tools: Path) -> None:
    store = RootfsStore(directory=tmp_path, busybox=Path("/bin/busybox"))
    view = CowView(
        method="dm-snapshot", path=tmp_path / "v.ext4", dm_name="zw-x", loops=("/dev/loop7",)
    )
    assert CowView.from_dict(view.as_dict()) == view
    await store.remove_view(view)
    await store.remove_view(view)
    assert (
        tools.read_text().splitlines()
        == [
            "dmsetup remove zw-x",
            "losetup -d /dev/loop7",
        ]
        * 2
    )


async def test_a_failing_tool_is_a_runtime_failure(tmp_path: Path, tools: Path) -> None:
    (tools.parent / "bin" / "losetup").write_text(
        "#!/bin/sh\necho 'losetup: no free loop' >&2\nexit 1\n"
    )
    store = RootfsStore(directory=tmp_path, busybox=Path("/bin/busybox"), cow_method="dm-snapshot")
    image = tmp_path / "base.ext4"
    image.write_bytes(b"\0" * 4096)
    with pytest.raises(RuntimeFailure, match="losetup failed: losetup: no free loop"):
        await store.make_view(image, tmp_path / "view", uid=1, gid=1)
