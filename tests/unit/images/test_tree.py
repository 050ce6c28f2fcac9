"""Reads confined to an image tree (symlinks cannot escape it) and disk usage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.images.tree import read_confined, resolve_confined, tree_size


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "host-secret").write_text("host secret\n")
    return root


def test_plain_read(root: Path):
    assert read_confined(root, "/etc/passwd") == "root:x:0:0::/root:/bin/sh\n"
    assert read_confined(root, "/etc/group") is None
    assert read_confined(root, "/etc") is None  # a directory


def test_absolute_symlink_stays_inside(root: Path, tmp_path: Path):
    (root / "etc" / "group").symlink_to(tmp_path / "host-secret")  # absolute host path
    assert resolve_confined(root, "/etc/group") == root / str(tmp_path / "host-secret")[1:]
    assert read_confined(root, "/etc/group") is None


def test_relative_dotdot_symlink_stays_inside(root: Path):
    (root / "etc" / "group").symlink_to("../../../../host-secret")
    assert resolve_confined(root, "/etc/group") == root / "host-secret"
    assert read_confined(root, "/etc/group") is None
    (root / "host-secret").write_text("inside\n")
    assert read_confined(root, "/etc/group") == "inside\n"


def test_symlinked_directory(root: Path):
    (root / "real").mkdir()
    (root / "real" / "group").write_text("g\n")
    (root / "etc2").symlink_to("/real")
    assert read_confined(root, "/etc2/group") == "g\n"


def test_symlink_loop(root: Path):
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(InvalidInput, match="too many symbolic links"):
        read_confined(root, "/a")


def test_fifo_is_not_read(root: Path):
    os.mkfifo(root / "etc" / "group")
    assert read_confined(root, "/etc/group") is None  # and does not block


def test_tree_size_counts_hard_links_once(tmp_path: Path):
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "a").write_bytes(b"x" * 100_000)
    before = tree_size(tree)
    os.link(tree / "a", tree / "b")
    assert tree_size(tree) == before
    assert before >= 100_000
