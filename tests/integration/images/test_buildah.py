"""An archive written by real ``buildah push oci-archive:`` imports with the right config."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.images import GROUP, INDEX_HTML, PASSWD, busybox_path
from zeitwork.images import ArchiveStore, ImageCache, import_archive

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed"),
]


class Buildah:
    """buildah with a private --root/--runroot (vfs) so tests never touch the host's storage."""

    def __init__(self, base: Path) -> None:
        self.flags = [
            "--root",
            str(base / "root"),
            "--runroot",
            str(base / "runroot"),
            "--storage-driver",
            "vfs",
        ]
        self.env = {**os.environ, "BUILDAH_ISOLATION": "chroot", "STORAGE_DRIVER": "vfs"}

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["buildah", *self.flags, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"buildah {args[0]} failed: {result.stderr}"
        return result.stdout.strip()


@pytest.fixture(scope="module")
def buildah_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("buildah")
    context = base / "context"
    (context / "bin").mkdir(parents=True)
    (context / "www").mkdir()
    (context / "etc").mkdir()
    shutil.copy2(busybox_path(), context / "bin" / "busybox")
    (context / "bin" / "sh").symlink_to("busybox")
    (context / "www" / "index.html").write_bytes(INDEX_HTML)
    (context / "etc" / "passwd").write_text(PASSWD)
    (context / "etc" / "group").write_text(GROUP)
    buildah = Buildah(base)
    container = buildah("from", "scratch")
    try:
        buildah("copy", container, str(context), "/")
        buildah(
            "config",
            "--entrypoint",
            '["/bin/busybox", "httpd", "-f", "-h", "/www"]',
            "--cmd",
            "-p 8080",
            "--port",
            "8080",
            "--env",
            "GREETING=from buildah",
            "--workingdir",
            "/www",
            "--user",
            "app",
            container,
        )
        buildah("commit", container, "zeitwork-test-busybox")
        archive = base / "image.tar"
        buildah("push", "zeitwork-test-busybox", f"oci-archive:{archive}")
        yield archive
    finally:
        subprocess.run(["buildah", *buildah.flags, "rm", "--all"], capture_output=True, check=False)
        subprocess.run(
            ["buildah", *buildah.flags, "rmi", "--all", "--force"], capture_output=True, check=False
        )
        shutil.rmtree(base / "root", ignore_errors=True)
        shutil.rmtree(base / "runroot", ignore_errors=True)


async def chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while data := handle.read(1 << 16):
            yield data


async def test_buildah_archive_imports(buildah_archive: Path, tmp_path: Path):
    store = ArchiveStore(root=tmp_path / "store")
    image = await import_archive(chunks(buildah_archive), store=store, max_bytes=1 << 30)
    assert image.digest.startswith("sha256:")
    assert image.size == buildah_archive.stat().st_size
    assert image.layers == 1
    config = image.config
    assert config.entrypoint == ("/bin/busybox", "httpd", "-f", "-h", "/www")
    assert config.cmd == ("-p", "8080")  # buildah splits a non-JSON --cmd on spaces
    assert config.exposed_ports == ("8080/tcp",)
    assert "GREETING=from buildah" in config.env
    assert config.working_dir == "/www"
    assert config.user == "app"
    assert (config.os, config.architecture) == ("linux", "amd64")
    assert sorted(p.name for p in (tmp_path / "store" / "tmp").iterdir()) == []

    # and the node side unpacks the very same archive under that digest
    async def fetch(dest: Path) -> None:
        shutil.copyfile(store.open_archive(image.digest), dest)

    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1 << 30)
    unpacked = await cache.ensure(image.digest, fetch)
    with cache.view(unpacked) as tree:
        assert (tree / "www" / "index.html").read_bytes() == INDEX_HTML
    process = unpacked.process()
    assert process.user == "1000:1000"
    assert process.argv == ("/bin/busybox", "httpd", "-f", "-h", "/www", "-p", "8080")
    await cache.close()
