"""scripts/fetch-firecracker.sh against a local stand-in for GitHub releases and the CI kernel
bucket (the real ones need internet): it resolves the latest tag, verifies the checksum,
installs firecracker and jailer, picks the newest CI kernel and prints the variables."""

from __future__ import annotations

import hashlib
import io
import platform
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.runtime.firecracker.fakefc import REPO

SCRIPT = REPO / "scripts" / "fetch-firecracker.sh"
VERSION = "v1.10.1"
ARCH = platform.machine()


def _release_tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("firecracker", "jailer"):
            body = f"#!/bin/sh\necho '{name.capitalize()} {VERSION}'\n".encode()
            info = tarfile.TarInfo(f"release-{VERSION}-{ARCH}/{name}-{VERSION}-{ARCH}")
            info.size, info.mode = len(body), 0o755
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


@pytest.fixture
def mirror() -> Iterator[tuple[str, dict[str, int]]]:
    tarball = _release_tarball()
    name = f"firecracker-{VERSION}-{ARCH}.tgz"
    files = {
        f"/releases/download/{VERSION}/{name}": tarball,
        f"/releases/download/{VERSION}/{name}.sha256.txt": (
            f"{hashlib.sha256(tarball).hexdigest()}  {name}\n".encode()
        ),
        # A tampered release: its checksum file does not match the tarball.
        f"/releases/download/v1.10.2/firecracker-v1.10.2-{ARCH}.tgz": tarball,
        f"/releases/download/v1.10.2/firecracker-v1.10.2-{ARCH}.tgz.sha256.txt": (
            f"{'0' * 64}  firecracker-v1.10.2-{ARCH}.tgz\n".encode()
        ),
        f"/ci/firecracker-ci/v1.10/{ARCH}/vmlinux-6.1.102": b"kernel 6.1.102",
        f"/ci/firecracker-ci/v1.10/{ARCH}/vmlinux-5.10.223": b"kernel 5.10.223",
    }
    listing = (
        "<ListBucketResult>"
        + "".join(
            f"<Contents><Key>{k.removeprefix('/ci/')}</Key></Contents>"
            for k in files
            if k.startswith("/ci/")
        )
        + "</ListBucketResult>"
    ).encode()
    hits: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            hits[path] = hits.get(path, 0) + 1
            if path == "/releases/latest":
                self.send_response(302)
                self.send_header("Location", f"/releases/tag/{VERSION}")
                self.end_headers()
                return
            body = listing if path == "/ci/" else files.get(path)
            if path == f"/releases/tag/{VERSION}":
                body = b"release page"
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(ARCH not in ("x86_64", "aarch64"), reason="Firecracker has no build here")
def test_fetch_script_installs_binaries_and_kernel(
    mirror: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    base, hits = mirror
    dest = tmp_path / "fc"
    result = subprocess.run(
        ["bash", str(SCRIPT), str(dest)],
        env={
            "PATH": "/usr/bin:/bin",
            "FC_RELEASES_URL": f"{base}/releases",
            "FC_CI_BUCKET": f"{base}/ci",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert hits["/releases/latest"] >= 1
    assert (dest / "firecracker").read_text().endswith(f"echo 'Firecracker {VERSION}'\n")
    assert (dest / "jailer").stat().st_mode & 0o111
    assert (dest / "vmlinux").read_bytes() == b"kernel 6.1.102"  # the newest CI kernel
    assert f"export FIRECRACKER_BIN={dest}/firecracker" in result.stdout
    assert f"export JAILER_BIN={dest}/jailer" in result.stdout
    assert f"export FIRECRACKER_KERNEL={dest}/vmlinux" in result.stdout


@pytest.mark.parametrize(("version", "why"), [("v1.10.2", "FAILED"), ("v9.9.9", "404")])
def test_fetch_script_refuses_a_bad_checksum_or_missing_release(
    mirror: tuple[str, dict[str, int]], tmp_path: Path, version: str, why: str
) -> None:
    base, _ = mirror
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "fc")],
        env={
            "PATH": "/usr/bin:/bin",
            "FC_RELEASES_URL": f"{base}/releases",
            "FC_CI_BUCKET": f"{base}/ci",
            "FC_VERSION": version,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert why in result.stdout + result.stderr
    assert not (tmp_path / "fc" / "firecracker").exists()
