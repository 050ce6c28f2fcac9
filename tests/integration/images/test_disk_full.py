"""A full disk gives a clear error and leaves nothing half-written (real tmpfs mounts)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.images import BuiltImage
from zeitwork.core.errors import RuntimeFailure, ServiceUnavailable
from zeitwork.images import ArchiveStore, ImageCache, import_archive

pytestmark = pytest.mark.requires_root


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Factory: mount a tmpfs of the given size (e.g. ``"768k"``); unmounted afterwards."""
    mounts: list[Path] = []

    def make(size: str) -> Path:
        mount = tmp_path / f"disk{len(mounts)}"
        mount.mkdir()
        options = f"size={size},mode=0700"
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "zeitwork-test", str(mount)], check=True
        )
        mounts.append(mount)
        return mount

    try:
        yield make
    finally:
        for mount in mounts:
            subprocess.run(["umount", "--lazy", str(mount)], check=True)


async def chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while data := handle.read(1 << 16):
            yield data


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_store_full(small_disk: Callable[[str], Path], busybox_image: BuiltImage):
    disk = small_disk("768k")  # smaller than the 1 MB archive
    store = ArchiveStore(root=disk / "store")
    with pytest.raises(ServiceUnavailable, match="no space left"):
        await import_archive(chunks(busybox_image.path), store=store, max_bytes=1 << 30)
    assert files_under(disk) == []


# 768k: the download itself does not fit; 2500k: the download and its verified blobs fit,
# the unpacked tree (umoci) does not
@pytest.mark.parametrize("size", ["768k", "2500k"])
async def test_cache_full(small_disk: Callable[[str], Path], busybox_image: BuiltImage, size: str):
    disk = small_disk(size)
    cache = await ImageCache.open(root=disk / "cache", max_bytes=1 << 30)

    async def fetch(dest: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, busybox_image.path, dest)

    with pytest.raises(RuntimeFailure, match="no space left on the node's disk"):
        await cache.ensure(busybox_image.digest, fetch)
    assert files_under(disk) == []
    assert cache.get(busybox_image.digest) is None
    await cache.close()
