"""The demo app of ``zeitwork dev --demo``: an OCI image archive built from the host's static
busybox (Debian package ``busybox-static``), serving one page with ``busybox httpd`` on port
8080 as an unprivileged user. Built in pure Python (tar, gzip, json), byte-for-byte
reproducible, so importing it twice gives the same image digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any, Literal

from zeitwork.core.files import atomic_write

DEMO_PORT = 8080
DEMO_PAGE = b"""<!doctype html>
<html><head><title>Zeitwork demo</title></head>
<body><h1>Hello from Zeitwork</h1>
<p>This page is served by busybox httpd in an instance that Zeitwork runs.</p></body></html>
"""
_MTIME = 1_700_000_000
_BUSYBOX_PLACES = ("/bin/busybox", "/usr/bin/busybox")


class DemoImageError(Exception):
    """The demo image cannot be built here; ``str(exc)`` says what to install."""


def find_busybox() -> Path:
    """The host's busybox binary, which must be static (it runs without the host's libc)."""
    found = [Path(p) for p in _BUSYBOX_PLACES if Path(p).is_file()]
    which = shutil.which("busybox")
    if which:
        found.append(Path(which))
    for path in found:
        if _is_static(path):
            return path
    raise DemoImageError("the demo image needs a static busybox: apt-get install busybox-static")


def _is_static(path: Path) -> bool:
    """An ELF file without a program interpreter (PT_INTERP) is statically linked."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit ELF only
        return False
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"
    phoff = int.from_bytes(data[32:40], order)
    phentsize = int.from_bytes(data[54:56], order)
    phnum = int.from_bytes(data[56:58], order)
    for index in range(phnum):
        start = phoff + index * phentsize
        if int.from_bytes(data[start : start + 4], order) == 3:  # PT_INTERP
            return False
    return True


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _layer(busybox: bytes) -> bytes:
    """The root file system: busybox, a user ``app`` (1000) and the page under /www."""
    files: list[tuple[str, bytes | None, int]] = [
        ("bin", None, 0o755),
        ("bin/busybox", busybox, 0o755),
        ("etc", None, 0o755),
        ("etc/passwd", b"root:x:0:0:root:/:/bin/sh\napp:x:1000:1000:app:/www:/bin/sh\n", 0o644),
        ("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644),
        ("tmp", None, 0o1777),
        ("www", None, 0o755),
        ("www/index.html", DEMO_PAGE, 0o644),
        ("www/health", b"ok\n", 0o644),
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode = _MTIME, mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.mtime, link.mode, link.type, link.linkname = _MTIME, 0o777, tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    return buffer.getvalue()


def demo_archive(busybox: Path) -> bytes:
    """The OCI image archive (a plain tar of an OCI layout) of the demo app."""
    plain = _layer(busybox.read_bytes())
    layer = gzip.compress(plain, compresslevel=6, mtime=0)
    config = _canonical(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": ["/bin/busybox", "httpd", "-f", "-p", str(DEMO_PORT), "-h", "/www"],
                "Env": ["PATH=/bin"],
                "User": "app",
                "WorkingDir": "/www",
                "ExposedPorts": {f"{DEMO_PORT}/tcp": {}},
            },
            "rootfs": {"type": "layers", "diff_ids": [_digest(plain)]},
        }
    )
    manifest = _canonical(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    )
    index = _canonical(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(manifest),
                    "size": len(manifest),
                }
            ],
        }
    )
    members: list[tuple[str, bytes | None]] = [
        ("oci-layout", _canonical({"imageLayoutVersion": "1.0.0"})),
        ("index.json", index),
        ("blobs", None),
        ("blobs/sha256", None),
    ]
    members += [
        ("blobs/sha256/" + _digest(blob).removeprefix("sha256:"), blob)
        for blob in (manifest, config, layer)
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = _MTIME
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_demo_archive(dest: Path) -> Path:
    """Build the demo archive into ``dest`` (written whole, then renamed into place)."""
    data = demo_archive(find_busybox())
    atomic_write(dest, data)
    return dest
