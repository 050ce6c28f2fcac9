"""Image import and unpack figures: ``python benchmarks/images.py [--mib 256]``.

Builds an OCI archive with one gzip layer of MIB MiB of incompressible files, then measures
``import_archive`` (streamed in 64 KiB chunks, validation included) in MB/s and the peak RSS
growth, and ``ImageCache.ensure`` (verify + umoci unpack) in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from zeitwork.images import ImageCache, ImageStore, import_archive


def _sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while data := handle.read(1 << 20):
            hasher.update(data)
    return hasher.hexdigest()


def build_archive(base: Path, mib: int) -> tuple[Path, str]:
    plain = base / "layer.tar"
    with tarfile.open(plain, "w") as tar:
        for i in range(mib):
            info = tarfile.TarInfo(f"data/file{i:05d}")
            info.size = 1 << 20
            tar.addfile(info, io.BytesIO(os.urandom(1 << 20)))
    diff_id = _sha256_file(plain)
    layer = base / "layer.tar.gz"
    with plain.open("rb") as src, gzip.GzipFile(layer, "wb", compresslevel=1, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    plain.unlink()
    layer_hex = _sha256_file(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/data/file00000"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + layer_hex,
                    "size": layer.stat().st_size,
                }
            ],
        }
    ).encode()
    manifest_hex = hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:" + manifest_hex,
                    "size": len(manifest),
                }
            ],
        }
    ).encode()
    archive = base / "image.tar"
    with tarfile.open(archive, "w") as tar:

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add_bytes("index.json", index)
        add_bytes(f"blobs/sha256/{manifest_hex}", manifest)
        add_bytes("blobs/sha256/" + hashlib.sha256(config).hexdigest(), config)
        tar.add(layer, arcname=f"blobs/sha256/{layer_hex}")
    layer.unlink()
    return archive, "sha256:" + manifest_hex


async def chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while data := handle.read(1 << 16):
            yield data


async def main(mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="zw-bench-images-") as tmp:
        base = Path(tmp)
        archive, digest = build_archive(base, mib)
        size = archive.stat().st_size
        store = ImageStore(root=base / "store")
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        image = await import_archive(chunks(archive), store=store, max_bytes=1 << 40)
        seconds = time.perf_counter() - started
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert image.digest == digest
        print(f"archive: {size / 1e6:.1f} MB, {mib} MiB unpacked")
        print(
            f"import_archive: {seconds:.2f} s = {size / 1e6 / seconds:.0f} MB/s "
            f"(peak RSS growth {(rss_after - rss_before) / 1024:.1f} MiB)"
        )

        async def fetch(dest: Path) -> None:
            await asyncio.to_thread(shutil.copyfile, store.open_archive(digest), dest)

        cache = await ImageCache.open(root=base / "cache", max_bytes=1 << 40)
        started = time.perf_counter()
        unpacked = await cache.ensure(digest, fetch)
        seconds = time.perf_counter() - started
        print(
            f"ImageCache.ensure (copy + verify + umoci unpack): {seconds:.2f} s "
            f"({unpacked.size / 1e6:.0f} MB on disk)"
        )
        started = time.perf_counter()
        await cache.ensure(digest, fetch)
        print(f"ImageCache.ensure (cached): {(time.perf_counter() - started) * 1e6:.0f} us")
        await cache.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    asyncio.run(main(parser.parse_args().mib))
