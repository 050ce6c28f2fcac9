from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from zeitwork.core import files
from zeitwork.core.files import atomic_write, atomic_write_json, atomic_write_text


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
