"""docker-archive imports (what ``docker save`` and ``skopeo copy ... docker-archive:`` write),
made by real skopeo from the busybox test image, then unpacked by the real node cache."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.images import BuiltImage
from zeitwork.core.errors import InvalidInput
from zeitwork.images import ArchiveStore, ImageCache, import_archive

pytestmark = pytest.mark.skipif(
    shutil.which("skopeo") is None or shutil.which("umoci") is None,
    reason="needs skopeo and umoci (scripts/bootstrap.sh)",
)


async def chunks(path: Path) -> AsyncIterator[bytes]:
    data = await asyncio.to_thread(path.read_bytes)
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


def docker_archive(source: Path, dest: Path) -> Path:
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci-archive:{source}", f"docker-archive:{dest}:r.io/a:v1"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dest


async def test_docker_archive_imports_and_unpacks(
    busybox_image: BuiltImage, tmp_path: Path
) -> None:
    archive = await asyncio.to_thread(docker_archive, busybox_image.path, tmp_path / "d.tar")
    store = ArchiveStore(root=tmp_path / "store")
    image = await import_archive(chunks(archive), store=store, max_bytes=1 << 30)
    assert list(image.config.entrypoint) == busybox_image.config["config"]["Entrypoint"]
    assert image.config.user == "app"
    assert image.layers == 1
    # the same content gives the same digest (the manifest written is deterministic)
    again = await asyncio.to_thread(docker_archive, busybox_image.path, tmp_path / "d2.tar")
    assert (await import_archive(chunks(again), store=store, max_bytes=1 << 30)).digest == (
        image.digest
    )
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1 << 30)
    stored = store.open_archive(image.digest)

    async def fetch(dest: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, stored, dest)

    unpacked = await cache.ensure(image.digest, fetch)
    with cache.view(unpacked) as tree:
        assert (tree / "bin" / "busybox").is_file()
        assert (tree / "www" / "health").read_text().strip() == "ok"


def rewrite(source: Path, dest: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of a tar with entries replaced (bytes) or dropped (None)."""
    with tarfile.open(source) as src, tarfile.open(dest, "w") as out:
        for member in src:
            if member.name in change:
                continue
            out.addfile(member, src.extractfile(member) if member.isreg() else None)
        for name, data in change.items():
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    return dest


async def test_bad_docker_archives_are_refused(busybox_image: BuiltImage, tmp_path: Path) -> None:
    archive = await asyncio.to_thread(docker_archive, busybox_image.path, tmp_path / "d.tar")
    with tarfile.open(archive) as tar:
        handle = tar.extractfile("manifest.json")
        assert handle is not None
        entries = json.loads(handle.read())
    layer = entries[0]["Layers"][0]
    store = ArchiveStore(root=tmp_path / "store")
    cases: dict[str, tuple[dict[str, bytes | None], str]] = {
        "two images": ({"manifest.json": json.dumps(entries * 2).encode()}, "exactly one"),
        "layer missing": ({layer: None}, "is missing"),
        "manifest not json": ({"manifest.json": b"{"}, "not valid JSON"),
        "layer not its diff_id": ({layer: b"\0" * 1024}, "diff_id"),
    }
    for name, (change, message) in cases.items():
        bad = await asyncio.to_thread(rewrite, archive, tmp_path / f"{name}.tar", change)
        with pytest.raises(InvalidInput) as info:
            await import_archive(chunks(bad), store=store, max_bytes=1 << 30)
        assert message in info.value.detail, name
        assert list((tmp_path / "store" / "tmp").iterdir()) == [], name
        assert store.digests() == [], name
