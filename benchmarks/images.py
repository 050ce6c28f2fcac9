"""Image figures: ``make bench-images`` (``python benchmarks/images.py``).

Default: **pull by reference into a node**. Builds a three-layer image (a base layer of
``--base-mib`` MiB, a middle one of ``--mid-mib`` MiB, a small top layer) and a second
version that differs only in its top layer, pushes both to a real ``docker-registry`` on
loopback with ``skopeo copy``, then measures in the same run, from the same registry:

- the node (``agent.images.NodeImages`` with a pull grant, as the agent runs it): cold (an
  empty node), the new version (only its top layer is fetched) and the cached image;
- ``skopeo copy docker://... oci:DIR`` + ``umoci unpack`` of the same images, the same three
  cases (skopeo reuses the blobs already in DIR for the second version).

The node's figure runs from "the image is wanted" to an unpacked, verified root filesystem
(the instance start that follows is ``make bench-agent``'s). ``--import MIB`` measures the
operator's archive import and the cache unpack instead (the older figure).
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
import subprocess
import tarfile
import tempfile
import time
import urllib.request
import uuid
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


# -- pull by reference ---------------------------------------------------------------------


def _layer(base: Path, name: str, files: list[tuple[str, bytes]]) -> tuple[Path, str, str]:
    """(gzip blob path, its digest, diff_id) of a layer holding ``files``."""
    plain = base / f"{name}.tar"
    with tarfile.open(plain, "w") as tar:
        for path, data in files:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + _sha256_file(plain)
    blob = base / f"{name}.tar.gz"
    with plain.open("rb") as src, gzip.GzipFile(blob, "wb", compresslevel=6, mtime=0) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    plain.unlink()
    return blob, "sha256:" + _sha256_file(blob), diff_id


def _filler(mib: int, prefix: str, seed: int) -> list[tuple[str, bytes]]:
    """Files of 256 KiB, half random (compressed code) and half text-like (compressible)."""
    words = b"usr lib share doc locale python3 debian bookworm package version "
    files = []
    for i in range(mib * 4):
        if i % 2:
            data = os.urandom(1 << 18)
        else:
            data = (words * ((1 << 18) // len(words) + 1))[: 1 << 18]
            data = bytes([seed]) + data[1:]
        files.append((f"{prefix}/file{i:05d}", data))
    return files


def _oci_archive(base: Path, name: str, layers: list[tuple[Path, str, str]]) -> tuple[Path, str]:
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/app/run"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [d for _p, _g, d in layers]},
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
                    "digest": digest,
                    "size": path.stat().st_size,
                }
                for path, digest, _d in layers
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
    archive = base / f"{name}.tar"
    with tarfile.open(archive, "w") as tar:

        def add_bytes(entry: str, data: bytes) -> None:
            info = tarfile.TarInfo(entry)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add_bytes("index.json", index)
        add_bytes(f"blobs/sha256/{manifest_hex}", manifest)
        add_bytes("blobs/sha256/" + hashlib.sha256(config).hexdigest(), config)
        for path, digest, _d in layers:
            tar.add(path, arcname="blobs/sha256/" + digest.removeprefix("sha256:"))
    return archive, "sha256:" + manifest_hex


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    config = root / "config.yml"
    root.mkdir(parents=True)
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return process, f"127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("docker-registry did not start") from None
            time.sleep(0.05)


def _run(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - started


class _Operator:
    """The operator's side of a node's pull: a grant naming the image's location."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.digests: dict[uuid.UUID, str] = {}

    async def image_pull_grant(self, image_id: uuid.UUID) -> dict[str, object]:
        digest = self.digests[image_id]
        return {
            "digest": digest,
            "location": f"{self.host}/library/app@{digest}",
            "plain_http": True,
        }

    async def download_image(self, *_args: object, **_kwargs: object) -> str:
        raise AssertionError("the node must not download from the operator here")


async def pull_bench(base_mib: int, mid_mib: int) -> None:
    from typing import cast

    from zeitwork.agent.images import NodeImages
    from zeitwork.clients.operator import OperatorClient
    from zeitwork.wire.agent import ImageRef

    rootless = ["--rootless"] if os.geteuid() != 0 else []
    with tempfile.TemporaryDirectory(prefix="zw-bench-pull-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        base_layer = _layer(work, "base", _filler(base_mib, "usr/lib", 1))
        mid_layer = _layer(work, "mid", _filler(mid_mib, "usr/share", 2))
        tops = [
            _layer(work, f"top{v}", [("app/run", f"#!/bin/sh\necho v{v}\n".encode() * 200)])
            for v in (1, 2)
        ]
        images = [_oci_archive(work, f"v{v}", [base_layer, mid_layer, tops[v - 1]]) for v in (1, 2)]
        blob_bytes = sum(p.stat().st_size for p, _d, _i in (base_layer, mid_layer, tops[0]))
        print(
            f"image: 3 layers, {blob_bytes / 1e6:.1f} MB compressed "
            f"({base_mib} + {mid_mib} MiB + a small top layer); built in "
            f"{time.perf_counter() - started:.1f} s"
        )
        process, host = _start_registry(work / "registry")
        try:
            for v, (archive, _digest) in enumerate(images, start=1):
                _run(
                    [
                        "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci-archive:{archive}", f"docker://{host}/library/app:v{v}",
                    ]
                )  # fmt: skip
            digests = [digest for _a, digest in images]
            # the node, as the agent runs it
            from zeitwork.images import ImageCache

            cache = await ImageCache.open(root=work / "node", max_bytes=1 << 40)
            operator = _Operator(host)
            node = NodeImages(
                cache=cache, operator=cast(OperatorClient, operator), pull_from_registry=True
            )
            refs = []
            for i, digest in enumerate(digests):
                ref = ImageRef(id=uuid.uuid4(), name=f"app:v{i + 1}", digest=digest, size=0)
                operator.digests[ref.id] = digest
                refs.append(ref)
            node_figures = []
            for ref in (refs[0], refs[1], refs[0]):
                started = time.perf_counter()
                await node.ensure(ref)
                node_figures.append(time.perf_counter() - started)
                node.release(ref.digest)
            fetched = len(node.blobs.fetched)
            await node.aclose()
            await cache.close()
            # skopeo copy + umoci unpack of the same images from the same registry
            layout = work / "skopeo-oci"
            skopeo_figures = []
            for n, v in enumerate((1, 2, 1)):
                bundle = work / f"bundle-{n}"
                seconds = _run(
                    [
                        "skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{host}/library/app@{digests[v - 1]}", f"oci:{layout}:v{v}",
                    ]
                )  # fmt: skip
                seconds += _run(
                    ["umoci", "unpack", *rootless, "--image", f"{layout}:v{v}", str(bundle)]
                )
                skopeo_figures.append(seconds)
        finally:
            process.terminate()
            process.wait(timeout=10)
    print(f"node blob fetches: {fetched} (3 layers + config of v1, top layer + config of v2)")
    print()
    print("| case | zeitwork node s | skopeo copy + umoci unpack s |")
    print("| --- | --- | --- |")
    names = (
        "cold (nothing on the node)",
        "new version, only the top layer changed",
        "cached (v1 again)",
    )
    for name, ours, theirs in zip(names, node_figures, skopeo_figures, strict=True):
        shown = f"{ours * 1e6:.0f} us" if ours < 0.01 else f"{ours:.2f}"
        print(f"| {name} | {shown} | {theirs:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--import", dest="import_mib", type=int, default=None, metavar="MIB")
    parser.add_argument("--base-mib", type=int, default=60)
    parser.add_argument("--mid-mib", type=int, default=8)
    args = parser.parse_args()
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.import_mib is not None:
        asyncio.run(main(args.import_mib))
    else:
        asyncio.run(pull_bench(args.base_mib, args.mid_mib))
