"""Image figures: ``make bench-images`` (``python benchmarks/images.py``, needs root).

Default: **a 70 MB Debian-based image from a registry to a listening instance**. A Debian
bookworm root file system (``mmdebstrap --variant=essential --include=python3-minimal``,
made once and kept as a tarball in ``/var/tmp/zeitwork-bench-images/``) becomes the base
layer of an image (``buildah from scratch`` + ``buildah add``), with a small Python HTTP
server as its top layer; a second version changes only that server. Both are pushed to a
real ``docker-registry`` on loopback, then, in the same run:

- the node's image step (``agent.images.NodeImages``: pull grant, blob store, layer store):
  cold, the new version, the cached image, until the image is ready to run;
- **assignment to listening**: the agent's supervisor in-process over the real oci driver
  (runc), network and image cache, on an empty node: the clock starts when the instance is
  assigned and stops at the first HTTP 200 from its address; the three cases again;
- ``skopeo copy docker://... oci:DIR`` + ``umoci unpack`` of the same images.

``--synthetic``: **pull by reference into a node** with a generated image. Builds a
three-layer image (a base layer of ``--base-mib`` MiB, a middle one of ``--mid-mib`` MiB,
a small top layer) and a second version that differs only in its top layer, pushes both
to a real ``docker-registry`` on loopback with ``skopeo copy``, then measures in the same
run, from the same registry:

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
from dataclasses import dataclass
from pathlib import Path

from zeitwork.images import ArchiveStore, ImageCache, import_archive


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
    layer_digest = "sha256:" + _sha256_file(layer)
    layers = [(layer, layer_digest, "sha256:" + diff_id)]
    archive, digest = _oci_archive(base, "image", layers, {"Cmd": ["/data/file00000"]})
    layer.unlink()
    return archive, digest


async def chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while data := handle.read(1 << 16):
            yield data


async def main(mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="zw-bench-images-") as tmp:
        base = Path(tmp)
        archive, digest = build_archive(base, mib)
        size = archive.stat().st_size
        store = ArchiveStore(root=base / "store")
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


def _oci_archive(
    base: Path, name: str, layers: list[tuple[Path, str, str]], run: dict[str, list[str]]
) -> tuple[Path, str]:
    """``base/<name>.tar``, an OCI archive of ``layers`` ((gzip blob, digest, diff_id) each)
    whose image config runs ``run`` (its ``config`` object); returns it and its digest."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": run,
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
        run = {"Cmd": ["/app/run"], "Env": ["PATH=/bin"]}
        images = [
            _oci_archive(work, f"v{v}", [base_layer, mid_layer, tops[v - 1]], run) for v in (1, 2)
        ]
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


CACHE_DIR = Path("/var/tmp/zeitwork-bench-images")
REPO = Path(__file__).resolve().parent.parent
SERVER = """import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(64)
body = b"VERSION\\n"
while True:
    c, _ = s.accept()
    try:
        c.recv(65536)
        c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
    finally:
        c.close()
"""


def debian_rootfs() -> Path:
    """The bookworm root file system tarball, made once (mmdebstrap, the host's apt sources)."""
    from zeitwork.builds.base_images import _DPKG_EXCLUDES, apt_sources

    target = CACHE_DIR / "bookworm-essential-python3-minimal.tar"
    if target.is_file():
        return target
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    started = time.perf_counter()
    subprocess.run(
        [
            "mmdebstrap", "--quiet", "--variant=essential", "--include=python3-minimal",
            *(f"--dpkgopt={opt}" for opt in _DPKG_EXCLUDES),
            "--format=tar", "bookworm", str(partial),
            *(source.line() for source in apt_sources()),
        ],
        check=True,
        timeout=1800,
    )  # fmt: skip
    partial.rename(target)
    print(f"made {target} in {time.perf_counter() - started:.0f} s")
    return target


def build_debian_images(work: Path, host: str) -> tuple[list[str], int]:
    """Push app:v1 and app:v2 (the same Debian base layer, their own top layer) with
    buildah; return their manifest digests and the base's compressed size."""
    rootfs = debian_rootfs()
    root = work / "buildah"
    store = ["--root", str(root), "--runroot", str(root) + ".run", "--storage-driver", "vfs"]

    def buildah(*args: str) -> str:
        done = subprocess.run(
            ["buildah", *store, *args], check=True, capture_output=True, text=True, timeout=900
        )
        return done.stdout.strip()

    base = buildah("from", "--quiet", "scratch")
    buildah("add", "--quiet", base, str(rootfs), "/")
    buildah("commit", "--quiet", "--rm", base, "localhost/bench/base")
    digests = []
    for v in (1, 2):
        app = work / f"server-v{v}.py"
        app.write_text(SERVER.replace("VERSION", f"v{v}"))
        c = buildah("from", "--quiet", "localhost/bench/base")
        buildah("copy", "--quiet", c, str(app), "/app/server.py")
        buildah(
            "config", "--cmd", "", "--entrypoint", '["/usr/bin/python3", "/app/server.py"]',
            "--env", "PATH=/usr/local/bin:/usr/bin:/bin", "--port", "8080", c,
        )  # fmt: skip
        buildah("commit", "--quiet", "--rm", c, f"localhost/bench/app:v{v}")
        digest_file = work / f"digest-v{v}"
        buildah(
            "push", "--quiet", "--tls-verify=false", "--digestfile", str(digest_file),
            f"localhost/bench/app:v{v}", f"docker://{host}/library/app:v{v}",
        )  # fmt: skip
        digests.append(digest_file.read_text().strip())
    return digests, rootfs.stat().st_size


async def _first_200(address: str, port: int, deadline: float) -> None:
    """Poll every 5 ms until ``GET /`` answers 200 (the instance is listening)."""
    while True:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), 1)
            try:
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 2)
            finally:
                writer.close()
                await writer.wait_closed()
            if line.split()[1:2] == [b"200"]:
                return
        except (OSError, TimeoutError):
            pass
        if time.perf_counter() > deadline:
            raise SystemExit(f"{address}:{port} did not answer 200 in time")
        await asyncio.sleep(0.005)


async def _assign_to_listening(work: Path, host: str, digests: list[str]) -> list[float]:
    """Assignment -> first HTTP 200, for v1 cold, v2, v1 cached, on one empty node."""
    import sys
    from typing import cast

    sys.path.insert(0, str(REPO))
    from tests.contract.runtime.harness import make_network

    from zeitwork.agent.images import NodeImages
    from zeitwork.agent.plan import Tuning
    from zeitwork.agent.state_store import StateStore
    from zeitwork.agent.supervisor import Supervisor
    from zeitwork.clients.operator import OperatorClient
    from zeitwork.core.resources import Resources
    from zeitwork.images import ImageCache
    from zeitwork.runtime.oci import OciDriver, RuncCli, become_subreaper, cgroups
    from zeitwork.wire.agent import AssignedInstance, InstanceStatusReport

    suffix = uuid.uuid4().hex[:6]
    become_subreaper()
    network = make_network(work / "net")
    await network.setup()
    driver = OciDriver(
        runc=RuncCli(root=work / "runc"), state_dir=work / "oci", cgroup_parent=f"zwbench-{suffix}"
    )
    cache = await ImageCache.open(root=work / "agent-images", max_bytes=1 << 40)
    operator = _Operator(host)
    images = NodeImages(
        cache=cache, operator=cast(OperatorClient, operator), pull_from_registry=True
    )
    reports: list[tuple[uuid.UUID, InstanceStatusReport]] = []
    supervisor = Supervisor(
        driver=driver,
        network=network,
        images=images,
        store=StateStore(root=work / "instances"),
        capacity=Resources.of(vcpu=2, memory_mib=2048),
        report=lambda i, r: reports.append((i, r)),
        tuning=Tuning(max_restarts=0, backoff_base=0.2, backoff_cap=0.8),
        stop_grace=0.5,
        tick=0.02,
    )
    supervisor.assignments_known = True
    task = asyncio.create_task(supervisor.run())
    figures = []
    try:
        image_ids = {d: uuid.uuid4() for d in digests}
        for digest, image_id in image_ids.items():
            operator.digests[image_id] = digest
        for digest in (digests[0], digests[1], digests[0]):
            assignment = AssignedInstance.model_validate(
                {
                    "id": uuid.uuid4(),
                    "desired_state": "running",
                    "image": {"id": image_ids[digest], "name": "app", "digest": digest, "size": 0},
                    "resources": {"vcpu": 0.5, "memory": 128},
                    "default_port": 8080,
                }
            )
            started = time.perf_counter()
            supervisor.put_local(assignment)
            address = None
            while address is None:
                for i, report in reports:
                    if i == assignment.id and report.ip_address:
                        address = report.ip_address
                    if i == assignment.id and report.state.value == "failed":
                        raise SystemExit(f"the instance failed: {report.reason}")
                await asyncio.sleep(0.002)
                if time.perf_counter() - started > 120:
                    raise SystemExit("the instance did not start within 120 s")
            await _first_200(address, 8080, started + 60)
            figures.append(time.perf_counter() - started)
        for assigned in list(supervisor.records):
            supervisor.remove(assigned)
        deadline = time.monotonic() + 30
        while supervisor.records and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await supervisor.close()
        await driver.recover([])
        cgroups.remove(f"/zwbench-{suffix}")
        await network.cleanup(keep=set())
        await network.teardown()
        await images.aclose()
        await cache.close()
    return figures


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class _NodeFacts:
    seconds: list[float]
    cpu: float
    fetched: int
    compressed: int
    unpacked: int
    layers: int


async def _node_image_step(work: Path, host: str, digests: list[str]) -> _NodeFacts:
    """The node's image step (``NodeImages`` as the agent runs it) on an empty node: v1
    cold, v2, v1 cached; seconds each and the cold pull's CPU seconds (all threads)."""
    from typing import cast

    from zeitwork.agent.images import NodeImages
    from zeitwork.clients.operator import OperatorClient
    from zeitwork.images import ImageCache
    from zeitwork.wire.agent import ImageRef

    cache = await ImageCache.open(root=work, max_bytes=1 << 40)
    operator = _Operator(host)
    node = NodeImages(cache=cache, operator=cast(OperatorClient, operator), pull_from_registry=True)
    seconds = []
    cpu = 0.0
    try:
        for n, digest in enumerate((digests[0], digests[1], digests[0])):
            ref = ImageRef(id=uuid.uuid4(), name="app", digest=digest, size=0)
            operator.digests[ref.id] = digest
            cpu_before, started = _cpu(resource.RUSAGE_SELF), time.perf_counter()
            image = await node.ensure(ref)
            seconds.append(time.perf_counter() - started)
            if n == 0:
                cpu = _cpu(resource.RUSAGE_SELF) - cpu_before
            node.release(ref.digest)
        store = cache.layer_store
        return _NodeFacts(
            seconds=seconds,
            cpu=cpu,
            fetched=len(node.blobs.fetched),
            compressed=node.blobs.used_bytes(),
            unpacked=sum(e.size for e in store.entries()) if store is not None else 0,
            layers=len(image.layers),
        )
    finally:
        await node.aclose()
        await cache.close()


def _skopeo_umoci(work: Path, host: str, digests: list[str]) -> tuple[list[float], float]:
    """``skopeo copy`` + ``umoci unpack`` of v1, v2, v1 into one OCI layout; seconds each
    and the cold one's CPU seconds."""
    layout = work / "oci"
    seconds = []
    cpu = 0.0
    for n, v in enumerate((1, 2, 1)):
        before = _cpu(resource.RUSAGE_CHILDREN)
        took = _run(
            [
                "skopeo", "copy", "--quiet", "--src-tls-verify=false",
                f"docker://{host}/library/app@{digests[v - 1]}", f"oci:{layout}:v{v}",
            ]
        )  # fmt: skip
        took += _run(["umoci", "unpack", "--image", f"{layout}:v{v}", str(work / f"bundle-{n}")])
        seconds.append(took)
        if n == 0:
            cpu = _cpu(resource.RUSAGE_CHILDREN) - before
    return seconds, cpu


async def debian_bench(rounds: int) -> None:
    import statistics

    if os.geteuid() != 0:
        raise SystemExit("bench-images: needs root (runc, overlayfs, the layer store)")
    ours: list[list[float]] = [[], [], []]
    full: list[list[float]] = [[], [], []]
    theirs: list[list[float]] = [[], [], []]
    cpu_ours: list[float] = []
    cpu_theirs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="zw-bench-debian-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        process, host = _start_registry(work / "registry")
        try:
            started = time.perf_counter()
            digests, rootfs_bytes = build_debian_images(work, host)
            print(
                f"image: Debian bookworm essential + python3-minimal ({rootfs_bytes / 1e6:.0f} MB "
                f"root file system tar) + a top layer (the app); built and pushed in "
                f"{time.perf_counter() - started:.1f} s"
            )
            for r in range(rounds):  # interleaved: the machine's load hits both sides alike
                round_dir = work / f"round-{r}"
                round_dir.mkdir()
                facts = await _node_image_step(round_dir / "node", host, digests)
                for case, value in enumerate(facts.seconds):
                    ours[case].append(value)
                cpu_ours.append(facts.cpu)
                seconds, cpu = await asyncio.to_thread(_skopeo_umoci, round_dir, host, digests)
                for case, value in enumerate(seconds):
                    theirs[case].append(value)
                cpu_theirs.append(cpu)
                listening = await _assign_to_listening(round_dir / "agent", host, digests)
                for case, value in enumerate(listening):
                    full[case].append(value)
                print(
                    f"round {r + 1}: node {_fmt(facts.seconds)}, to listening "
                    f"{_fmt(listening)}, skopeo + umoci {_fmt(seconds)} "
                    f"(load average {os.getloadavg()[0]:.1f})"
                )
        finally:
            process.terminate()
            process.wait(timeout=10)
    print(
        f"blobs fetched by the node: {facts.fetched} ({facts.compressed / 1e6:.1f} MB "
        f"compressed), layers unpacked {facts.unpacked / 1e6:.1f} MB, "
        f"{facts.layers} layers per image; cold pull CPU seconds (user + sys, median): "
        f"node {statistics.median(cpu_ours):.2f}, "
        f"skopeo + umoci {statistics.median(cpu_theirs):.2f}"
    )
    print()
    print(f"median of {rounds} rounds (min-max):")
    print()
    print("| case | node: image ready s | node: assignment -> listening s | skopeo + umoci s |")
    print("| --- | --- | --- | --- |")
    names = (
        "cold (nothing on the node)",
        "new version, only the top layer changed",
        "cached (v1 again)",
    )
    for case, name in enumerate(names):
        print(
            f"| {name} | {_spread(ours[case])} | {_spread(full[case])} | {_spread(theirs[case])} |"
        )


def _fmt(values: list[float]) -> str:
    return " / ".join(_seconds(v) for v in values)


def _seconds(value: float) -> str:
    return f"{value * 1e6:.0f} us" if value < 0.01 else f"{value:.2f}"


def _spread(values: list[float]) -> str:
    import statistics

    return (
        f"{_seconds(statistics.median(values))} ({_seconds(min(values))}-{_seconds(max(values))})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--import", dest="import_mib", type=int, default=None, metavar="MIB")
    parser.add_argument("--synthetic", action="store_true", help="a generated 3-layer image")
    parser.add_argument("--verbose", action="store_true", help="log events (where time goes)")
    parser.add_argument("--rounds", type=int, default=3, help="Debian bench rounds (interleaved)")
    parser.add_argument("--base-mib", type=int, default=60)
    parser.add_argument("--mid-mib", type=int, default=8)
    args = parser.parse_args()
    import logging

    import structlog

    level = logging.INFO if args.verbose else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    if args.import_mib is not None:
        asyncio.run(main(args.import_mib))
    elif args.synthetic:
        asyncio.run(pull_bench(args.base_mib, args.mid_mib))
    else:
        asyncio.run(debian_bench(args.rounds))
