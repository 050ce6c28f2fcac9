"""The demo image is a valid OCI archive (checked by the operator's own validator)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.cli.demo_image import (
    DEMO_PORT,
    DemoImageError,
    _is_static,
    find_busybox,
    write_demo_archive,
)
from zeitwork.images import inspect_archive


@pytest.fixture
def busybox() -> Path:
    try:
        return find_busybox()
    except DemoImageError as exc:
        pytest.skip(str(exc))


def test_demo_archive_passes_the_import_validation(busybox: Path, tmp_path: Path) -> None:
    first = write_demo_archive(tmp_path / "a" / "demo.tar")
    info = inspect_archive(first)
    assert info.config.entrypoint[:2] == ("/bin/busybox", "httpd")
    assert str(DEMO_PORT) in info.config.entrypoint
    assert info.config.user == "app"
    assert len(info.layers) == 1
    # reproducible: a second build is the same image
    second = write_demo_archive(tmp_path / "b" / "demo.tar")
    assert inspect_archive(second).digest == info.digest
    assert first.read_bytes() == second.read_bytes()
    assert not list((tmp_path / "a").glob(".*tmp"))


def test_only_static_binaries_qualify(busybox: Path, tmp_path: Path) -> None:
    assert _is_static(busybox)
    assert not _is_static(Path("/bin/ls"))  # dynamically linked
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    assert not _is_static(text)
