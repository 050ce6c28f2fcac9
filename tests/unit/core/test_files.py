from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zeitwork.core import files
from zeitwork.core.files import (
    PendingFile,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    commit_file,
)


@pytest.fixture
def wide_umask() -> Iterator[None]:
    old = os.umask(0o077)  # narrower than any mode asked for below: the mode must win
    try:
        yield
    finally:
        os.umask(old)


def test_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "x.json"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


@pytest.mark.usefixtures("wide_umask")
def test_the_mode_asked_for_is_kept_whatever_the_umask(tmp_path: Path) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    atomic_write_text(shared, "a\n", mode=0o644)
    atomic_write_json(private, {"k": 1}, mode=0o600)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text() == '{\n "k": 1\n}'


def test_a_failed_fsync_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.json"
    atomic_write(path, b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_a_failed_rename_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "child").write_text("keeps the directory non-empty")
    with pytest.raises(OSError):
        atomic_write(target, b"cannot replace a directory")  # os.replace refuses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_an_interrupt_mid_write_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x"

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, b"data")
    assert list(tmp_path.iterdir()) == []


def test_not_durable_skips_fsync_but_still_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(files.os, "fsync", synced.append)
    atomic_write(tmp_path / "stats", b"{}", durable=False)
    assert synced == []
    assert (tmp_path / "stats").read_bytes() == b"{}"
    atomic_write(tmp_path / "record", b"{}")
    assert len(synced) == 2  # the file, then its directory


def test_a_pending_file_filled_by_a_program_is_committed_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "images" / "root.ext4"
    with PendingFile(target, mode=0o444) as pending:
        assert pending.temp.parent == target.parent and pending.temp.name.startswith(".")
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={pending.temp}", "bs=512", "count=2"],
            check=True,
            capture_output=True,
        )
        assert not target.exists()  # readers see nothing until the block ends
    assert target.stat().st_size == 1024
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert [p.name for p in target.parent.iterdir()] == ["root.ext4"]


def test_a_pending_file_whose_block_raises_is_removed_and_the_old_file_kept(
    tmp_path: Path,
) -> None:
    target = tmp_path / "x"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), PendingFile(target) as pending:
        with pending.open() as out:
            out.write(b"half")
        raise RuntimeError("the program failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_a_pending_file_named_by_its_content(tmp_path: Path) -> None:
    with PendingFile(tmp_path / "partial", durable=False) as pending:
        with pending.open() as out:
            out.write(b"blob")
        pending.path = tmp_path / "8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52"
    assert [p.read_bytes() for p in tmp_path.iterdir()] == [b"blob"]
    assert pending.path.exists()


def test_open_refuses_an_existing_temp(tmp_path: Path) -> None:
    pending = PendingFile(tmp_path / "x")
    pending.open().close()
    with pytest.raises(FileExistsError):
        pending.open()
    pending.discard()
    assert list(tmp_path.iterdir()) == []


def test_async_with_commits_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_in: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced_in.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)

    async def build() -> None:
        async with PendingFile(tmp_path / "rootfs", mode=0o600) as pending:
            await asyncio.to_thread(pending.temp.write_bytes, b"ext4")

    asyncio.run(build())
    assert (tmp_path / "rootfs").read_bytes() == b"ext4"
    assert len(synced_in) == 2 and threading.main_thread().name not in synced_in


def test_async_with_that_raises_leaves_nothing(tmp_path: Path) -> None:
    async def build() -> None:
        async with PendingFile(tmp_path / "rootfs") as pending:
            pending.temp.write_bytes(b"part")
            raise ValueError("mkfs failed")

    with pytest.raises(ValueError, match="mkfs"):
        asyncio.run(build())
    assert list(tmp_path.iterdir()) == []


def test_the_temp_can_live_in_the_stores_own_tmp_dir(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    seen: list[str] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        seen.append(str(Path(src).parent))
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files.os, "replace", replace)
        atomic_write_text(tmp_path / "abc.json", "{}", temp_dir=scratch, durable=False)
    assert seen == [str(scratch)]
    assert (tmp_path / "abc.json").read_text() == "{}"
    assert list(scratch.iterdir()) == []


def test_commit_file_keeps_or_sets_the_mode(tmp_path: Path) -> None:
    upload = tmp_path / "tmp" / "upload-1"
    upload.parent.mkdir()
    upload.write_bytes(b"archive")
    upload.chmod(0o640)
    commit_file(upload, tmp_path / "kept")
    assert stat.S_IMODE((tmp_path / "kept").stat().st_mode) == 0o640
    upload.write_bytes(b"archive")
    commit_file(upload, tmp_path / "private", mode=0o600)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600
    assert not upload.exists()


def test_a_failed_commit_removes_the_temp_and_keeps_the_target(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "child").write_text("a non-empty directory cannot be replaced")
    temp = tmp_path / "upload"
    temp.write_bytes(b"x")
    with pytest.raises(OSError):
        commit_file(temp, target)
    assert not temp.exists() and (target / "child").exists()
