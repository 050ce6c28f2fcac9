"""Import into the content-addressed store: streaming, size cap, validation, no leftovers."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import tarfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.images import (
    MEDIA_MANIFEST,
    BuiltImage,
    Entry,
    Layout,
    gzip_bytes,
    image_layout,
    layer_tar,
    sha256,
    write_archive,
)
from zeitwork.core.errors import InvalidInput, NotFound, PayloadTooLarge
from zeitwork.images import ArchiveStore, import_archive, inspect_archive


async def file_chunks(path: Path, size: int = 65536) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while data := handle.read(size):
            yield data


async def bytes_chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def leftovers(store: ArchiveStore) -> list[Path]:
    return sorted(p for p in store.root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> ArchiveStore:
    return ArchiveStore(root=tmp_path / "store")


async def test_import_stores_by_manifest_digest(store: ArchiveStore, busybox_image: BuiltImage):
    image = await import_archive(file_chunks(busybox_image.path), store=store, max_bytes=1 << 30)
    assert image.digest == busybox_image.digest
    assert image.size == busybox_image.size
    assert image.layers == 1
    assert image.unpacked_size > 1_000_000  # busybox itself
    assert image.path == store.path_for(image.digest)
    assert image.path.read_bytes() == busybox_image.path.read_bytes()
    assert store.open_archive(image.digest) == image.path
    assert store.digests() == [image.digest]
    config = image.config
    assert config.entrypoint == ("/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www")
    assert config.cmd == ()
    assert config.env == ("PATH=/bin", "APP_GREETING=hello")
    assert config.working_dir == "/www"
    assert config.user == "app"
    assert config.exposed_ports == ("8080/tcp",)
    assert config.tcp_ports() == [8080]
    assert (config.os, config.architecture) == ("linux", "amd64")
    # only the archive remains: no temp files
    assert leftovers(store) == [image.path]


async def test_import_twice_is_idempotent(store: ArchiveStore, busybox_image: BuiltImage):
    first = await import_archive(file_chunks(busybox_image.path), store=store, max_bytes=1 << 30)
    second = await import_archive(
        file_chunks(busybox_image.path, 4096), store=store, max_bytes=1 << 30
    )
    assert first == second
    assert leftovers(store) == [first.path]


async def test_inspect_and_delete(store: ArchiveStore, busybox_image: BuiltImage):
    image = await import_archive(file_chunks(busybox_image.path), store=store, max_bytes=1 << 30)
    again = await store.inspect(image.digest)
    assert again == image
    assert store.delete(image.digest) is True
    assert store.delete(image.digest) is False
    with pytest.raises(NotFound):
        store.open_archive(image.digest)
    assert leftovers(store) == []


async def test_size_cap(store: ArchiveStore, busybox_image: BuiltImage):
    with pytest.raises(PayloadTooLarge) as info:
        await import_archive(
            file_chunks(busybox_image.path), store=store, max_bytes=busybox_image.size - 1
        )
    assert str(busybox_image.size - 1) in info.value.detail
    assert leftovers(store) == []


async def test_cancelled_upload_leaves_nothing(store: ArchiveStore, busybox_image: BuiltImage):
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        async for chunk in file_chunks(busybox_image.path, 4 << 20):
            yield chunk
            started.set()
            await asyncio.Event().wait()  # the client stalls forever

    task = asyncio.create_task(import_archive(slow(), store=store, max_bytes=1 << 30))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(store) == []


def test_unknown_digest(store: ArchiveStore):
    with pytest.raises(NotFound):
        store.open_archive("sha256:" + "0" * 64)
    with pytest.raises(InvalidInput):
        store.open_archive("sha256:../../etc/passwd")


def test_clean_temp(store: ArchiveStore):
    stale = store.new_temp()
    stale.write_bytes(b"half an upload")
    assert store.clean_temp(older_than=3600) == 0
    assert store.clean_temp(older_than=-1) == 1
    assert not stale.exists()


def test_inspect_buildah_style_archive_with_extract(tmp_path: Path, busybox_image: BuiltImage):
    out = tmp_path / "layout"
    out.mkdir()
    info = inspect_archive(busybox_image.path, expected_digest=busybox_image.digest, extract_to=out)
    index = json.loads((out / "index.json").read_text())
    assert index["manifests"][0]["digest"] == info.digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "zeitwork"
    names = sorted(p.name for p in (out / "blobs" / "sha256").iterdir())
    expected = sorted(
        d.removeprefix("sha256:") for d in (info.digest, info.config_digest, *info.layers)
    )
    assert names == expected


# ---- corruption cases: each is refused with InvalidInput and leaves nothing --------------


def _mutate_manifest(layout: Layout, change: Callable[[dict], None]) -> None:
    """Change the manifest and re-point index.json at the new manifest blob."""
    del layout.files[layout.blob_name(layout.manifest_digest)]
    change(layout.manifest)
    data = json.dumps(layout.manifest).encode()
    digest = layout.put_blob(data)
    layout.files["index.json"] = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [{"mediaType": MEDIA_MANIFEST, "digest": digest, "size": len(data)}],
        }
    ).encode()


def _mutate_config(layout: Layout, change: Callable[[dict], None]) -> None:
    del layout.files[layout.blob_name(layout.config_digest)]
    change(layout.config)
    data = json.dumps(layout.config).encode()
    digest = layout.put_blob(data)

    def point(manifest: dict) -> None:
        manifest["config"]["digest"] = digest
        manifest["config"]["size"] = len(data)

    _mutate_manifest(layout, point)


def _drop_layer_blob(layout: Layout) -> None:
    del layout.files[layout.blob_name(layout.layer_digests[0])]


def _flip_layer_byte(layout: Layout) -> None:
    name = layout.blob_name(layout.layer_digests[0])
    data = bytearray(layout.files[name])
    data[len(data) // 2] ^= 0xFF
    layout.files[name] = bytes(data)


def _wrong_size(layout: Layout) -> None:
    def change(manifest: dict) -> None:
        manifest["layers"][0]["size"] += 1

    _mutate_manifest(layout, change)


def _bad_layout_version(layout: Layout) -> None:
    layout.files["oci-layout"] = b'{"imageLayoutVersion": "2.0.0"}'


def _no_index(layout: Layout) -> None:
    del layout.files["index.json"]


def _index_not_json(layout: Layout) -> None:
    layout.files["index.json"] = b"{not json"


def _empty_index(layout: Layout) -> None:
    layout.files["index.json"] = b'{"schemaVersion": 2, "manifests": []}'


def _two_manifests_no_platform(layout: Layout) -> None:
    index = json.loads(layout.files["index.json"])
    index["manifests"].append(dict(index["manifests"][0]))
    layout.files["index.json"] = json.dumps(index).encode()


def _docker_manifest(layout: Layout) -> None:
    index = json.loads(layout.files["index.json"])
    index["manifests"][0]["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json"
    layout.files["index.json"] = json.dumps(index).encode()


def _zstd_layer(layout: Layout) -> None:
    def change(manifest: dict) -> None:
        manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"

    _mutate_manifest(layout, change)


def _foreign_layer(layout: Layout) -> None:
    def change(manifest: dict) -> None:
        manifest["layers"][0]["mediaType"] = (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        )

    _mutate_manifest(layout, change)


def _arm64(layout: Layout) -> None:
    _mutate_config(layout, lambda c: c.update(architecture="arm64"))


def _wrong_diff_id(layout: Layout) -> None:
    _mutate_config(layout, lambda c: c["rootfs"].update(diff_ids=["sha256:" + "1" * 64]))


def _missing_diff_id(layout: Layout) -> None:
    _mutate_config(layout, lambda c: c["rootfs"].update(diff_ids=[]))


def _bad_env(layout: Layout) -> None:
    _mutate_config(layout, lambda c: c["config"].update(Env=["NOEQUALS"]))


def _bad_entrypoint(layout: Layout) -> None:
    _mutate_config(layout, lambda c: c["config"].update(Entrypoint="/bin/sh -c x"))


def _replace_layer(layout: Layout, blob: bytes, diff_id: str) -> None:
    _drop_layer_blob(layout)
    digest = layout.put_blob(blob)

    def change(config: dict) -> None:
        config["rootfs"]["diff_ids"] = [diff_id]

    del layout.files[layout.blob_name(layout.config_digest)]
    change(layout.config)
    data = json.dumps(layout.config).encode()
    config_digest = layout.put_blob(data)

    def point(manifest: dict) -> None:
        manifest["config"] = dict(manifest["config"], digest=config_digest, size=len(data))
        manifest["layers"][0] = dict(manifest["layers"][0], digest=digest, size=len(blob))

    _mutate_manifest(layout, point)


def _layer_not_gzip(layout: Layout) -> None:
    plain = layer_tar([Entry("hello", b"x")])
    _replace_layer(layout, plain, sha256(plain))  # declared +gzip, is a plain tar


def _layer_truncated_gzip(layout: Layout) -> None:
    plain = layer_tar([Entry("hello", b"x" * 100_000)])
    blob = gzip_bytes(plain)[:-100]
    _replace_layer(layout, blob, sha256(plain))


def _layer_not_tar(layout: Layout) -> None:
    plain = b"this is not a tar file at all" * 40
    _replace_layer(layout, gzip.compress(plain, mtime=0), sha256(plain))


def _layer_path_traversal(layout: Layout) -> None:
    plain = layer_tar([Entry("../../etc/cron.d/evil", b"* * * * * root id\n")])
    _replace_layer(layout, gzip_bytes(plain), sha256(plain))


def _layer_absolute_hardlink(layout: Layout) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("passwd")
        info.type, info.linkname = tarfile.LNKTYPE, "../../../etc/shadow"
        tar.addfile(info)
    plain = buf.getvalue()
    _replace_layer(layout, gzip_bytes(plain), sha256(plain))


def _extra_top_level_file(layout: Layout) -> None:
    layout.files["evil.sh"] = b"#!/bin/sh\n"


def _traversal_name(layout: Layout) -> None:
    layout.files["blobs/sha256/../../../escape"] = b"x"


def _blob_not_named_by_hash(layout: Layout) -> None:
    layout.files["blobs/sha256/abc"] = b"x"


def _docker_archive(layout: Layout) -> None:
    """manifest.json without oci-layout: a docker-archive, and this one lists no image."""
    layout.files["manifest.json"] = b"[]"
    del layout.files["oci-layout"]


CORRUPTIONS: dict[str, tuple[Callable[[Layout], None], str]] = {
    "missing layer blob": (_drop_layer_blob, "missing"),
    "layer byte flipped": (_flip_layer_byte, "does not match its sha256"),
    "descriptor size wrong": (_wrong_size, "descriptor says"),
    "oci-layout version": (_bad_layout_version, "imageLayoutVersion"),
    "no index.json": (_no_index, "index.json is missing"),
    "index.json not json": (_index_not_json, "not valid JSON"),
    "index without manifests": (_empty_index, "no manifests"),
    "two manifests, no platform": (_two_manifests_no_platform, "expected exactly one"),
    "manifest type unlike its descriptor": (_docker_manifest, "differs from its descriptor"),
    "zstd layer": (_zstd_layer, "zstd decompressor"),
    "foreign layer": (_foreign_layer, "foreign (non-distributable)"),
    "arm64 image": (_arm64, "linux/arm64"),
    "wrong diff_id": (_wrong_diff_id, "diff_id"),
    "diff_ids count": (_missing_diff_id, "diff_ids"),
    "malformed Env": (_bad_env, "KEY=value"),
    "Entrypoint not a list": (_bad_entrypoint, "Entrypoint"),
    "layer declared gzip, is tar": (_layer_not_gzip, "gzip"),
    "layer gzip truncated": (_layer_truncated_gzip, "truncated gzip"),
    "layer not a tar": (_layer_not_tar, "not a valid tar"),
    "layer path traversal": (_layer_path_traversal, "unsafe path"),
    "layer hard link escapes": (_layer_absolute_hardlink, "outside the image"),
    "unexpected top-level file": (_extra_top_level_file, "unexpected entry"),
    "path traversal in archive": (_traversal_name, "unsafe path"),
    "blob not named by sha256": (_blob_not_named_by_hash, "not named by its sha256"),
    "docker-archive without its layers": (_docker_archive, "docker-archive: manifest.json"),
}


@pytest.fixture(scope="module")
def small_layout_files() -> dict[str, bytes]:
    return image_layout().files


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
async def test_corrupt_archive_is_refused(store: ArchiveStore, tmp_path: Path, case: str):
    corrupt, message = CORRUPTIONS[case]
    layout = image_layout()
    corrupt(layout)
    archive = write_archive(tmp_path / "bad.tar", layout.files)
    with pytest.raises(InvalidInput) as info:
        await import_archive(file_chunks(archive), store=store, max_bytes=1 << 30)
    assert message in info.value.detail
    assert leftovers(store) == []


def _tar_with(tmp_path: Path, info: tarfile.TarInfo) -> Path:
    return write_archive(tmp_path / "bad.tar", image_layout().files, extra=[info])


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (tarfile.SYMTYPE, "a symlink"),
        (tarfile.LNKTYPE, "a hard link"),
        (tarfile.CHRTYPE, "a device"),
        (tarfile.FIFOTYPE, "a fifo"),
    ],
)
async def test_links_and_devices_in_archive_are_refused(
    store: ArchiveStore, tmp_path: Path, kind: bytes, message: str
):
    info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
    info.type = kind
    info.linkname = "/etc/shadow"
    archive = _tar_with(tmp_path, info)
    with pytest.raises(InvalidInput) as error:
        await import_archive(file_chunks(archive), store=store, max_bytes=1 << 30)
    assert message in error.value.detail
    assert leftovers(store) == []


async def test_symlinked_oci_layout_is_refused(store: ArchiveStore, tmp_path: Path):
    files = image_layout().files
    del files["index.json"]
    info = tarfile.TarInfo("index.json")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive = write_archive(tmp_path / "bad.tar", files, extra=[info])
    with pytest.raises(InvalidInput, match="symlink"):
        await import_archive(file_chunks(archive), store=store, max_bytes=1 << 30)
    assert leftovers(store) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"hello, this is not a tar" * 100, "not a tar"),
        (gzip.compress(b"x" * 1000), "gzip-compressed"),
    ],
)
async def test_not_an_archive(store: ArchiveStore, body: bytes, message: str):
    with pytest.raises(InvalidInput, match=message):
        await import_archive(bytes_chunks(body), store=store, max_bytes=1 << 30)
    assert leftovers(store) == []


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.97])
async def test_truncated_archive(store: ArchiveStore, busybox_image: BuiltImage, cut: float):
    data = busybox_image.path.read_bytes()
    truncated = data[: int(len(data) * cut)]
    with pytest.raises(InvalidInput):
        await import_archive(bytes_chunks(truncated), store=store, max_bytes=1 << 30)
    assert leftovers(store) == []


async def test_multi_platform_index_picks_linux_amd64(store: ArchiveStore, tmp_path: Path):
    amd = image_layout()
    arm = image_layout(architecture="arm64", env=("ARCH=arm",))
    files = {**arm.files, **amd.files}
    entries = []
    for layout, arch in ((arm, "arm64"), (amd, "amd64")):
        manifest = layout.files[layout.blob_name(layout.manifest_digest)]
        entries.append(
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": layout.manifest_digest,
                "size": len(manifest),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    archive = write_archive(tmp_path / "multi.tar", files)
    image = await import_archive(file_chunks(archive), store=store, max_bytes=1 << 30)
    assert image.digest == amd.manifest_digest
    assert image.config.architecture == "amd64"


async def test_nested_index_is_followed(store: ArchiveStore, tmp_path: Path):
    layout = image_layout()
    inner = json.loads(layout.files["index.json"])
    inner["manifests"][0]["platform"] = {"os": "linux", "architecture": "amd64"}
    inner_blob = json.dumps(inner).encode()
    inner_digest = layout.put_blob(inner_blob)
    layout.files["index.json"] = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "digest": inner_digest,
                    "size": len(inner_blob),
                }
            ],
        }
    ).encode()
    archive = write_archive(tmp_path / "nested.tar", layout.files)
    image = await import_archive(file_chunks(archive), store=store, max_bytes=1 << 30)
    assert image.digest == layout.manifest_digest


async def test_uncompressed_layers_and_several_layers(store: ArchiveStore, tmp_path: Path):
    layers = [
        [Entry("a", mode=0o755), Entry("a/one", b"1")],
        [Entry("a", mode=0o755), Entry("a/two", b"22"), Entry("a/.wh.one", b"")],
    ]
    layout = image_layout(layers=layers, compress=False, entrypoint=None, cmd=["/a/two"])
    archive = write_archive(tmp_path / "plain.tar", layout.files)
    image = await import_archive(file_chunks(archive), store=store, max_bytes=1 << 30)
    assert image.layers == 2
    assert image.unpacked_size == 3
    assert image.config.cmd == ("/a/two",)
    assert image.config.entrypoint == ()


async def test_unreferenced_corrupt_blob_is_refused(store: ArchiveStore, tmp_path: Path):
    layout = image_layout()
    layout.files["blobs/sha256/" + "f" * 64] = b"not what the name says"
    archive = write_archive(tmp_path / "extra.tar", layout.files)
    with pytest.raises(InvalidInput, match="does not match"):
        await import_archive(file_chunks(archive), store=store, max_bytes=1 << 30)
    assert leftovers(store) == []


async def test_client_disconnect_midway_leaves_nothing(
    store: ArchiveStore, busybox_image: BuiltImage
):
    class ClientDisconnect(Exception):
        pass

    async def broken() -> AsyncIterator[bytes]:
        async for chunk in file_chunks(busybox_image.path, 300_000):
            yield chunk
            raise ClientDisconnect

    with pytest.raises(ClientDisconnect):
        await import_archive(broken(), store=store, max_bytes=1 << 30)
    assert leftovers(store) == []


async def test_oci_layout_with_docker_save_extras_is_accepted(
    store: ArchiveStore, tmp_path: Path
) -> None:
    """docker save (Docker 25+) writes an OCI layout plus manifest.json and repositories."""
    layout = image_layout()
    layout.files["manifest.json"] = b'[{"Config": "x", "Layers": []}]'
    layout.files["repositories"] = b"{}"
    archive = write_archive(tmp_path / "docker25.tar", layout.files)
    image = await import_archive(file_chunks(archive), store=store, max_bytes=1 << 30)
    assert image.digest == layout.manifest_digest
