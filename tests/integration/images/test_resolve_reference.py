"""The operator's ``resolve_reference`` against a real registry and a real PostgreSQL: a tag
resolved to its digest and pulled into the archive store (OCI and Docker media types, an
index for several platforms), idempotent, a moved tag, refusals with their reason."""

from __future__ import annotations

import asyncio
import json
import shutil
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.images import BuiltImage, build_image
from tests.registry import Registry, registry_available, start_registry
from zeitwork.clients.registry import RegistryClient, registry_http_client
from zeitwork.core.errors import InvalidInput, NotFound, PayloadTooLarge, ServiceUnavailable
from zeitwork.core.states import ImageState
from zeitwork.images import ArchiveStore, ImageCache, inspect_archive
from zeitwork.images import manifests as m
from zeitwork.images.reference import parse_reference
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.images import ImageStore
from zeitwork.operator.services.images import ImageService

pytestmark = pytest.mark.skipif(
    not registry_available(), reason="needs docker-registry and skopeo (scripts/bootstrap.sh)"
)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
async def db(migrated_database: str) -> AsyncIterator[Database]:
    database = Database(url=migrated_database, min_size=1, max_size=4, timeout=10)
    await database.open(wait=True, wait_seconds=10)
    try:
        yield database
    finally:
        await database.close()


def make_service(db: Database, root: Path, *, max_bytes: int = 1 << 30) -> ImageService:
    client = RegistryClient(
        http=registry_http_client(), accept=m.ACCEPT, max_manifest_bytes=m.MAX_MANIFEST_BYTES
    )
    return ImageService(
        images=ImageStore(db=db),
        archives=ArchiveStore(root=root),
        max_bytes=max_bytes,
        registry=client,
    )


@pytest.fixture
async def service(db: Database, tmp_path: Path) -> AsyncIterator[ImageService]:
    svc = make_service(db, tmp_path / "images")
    try:
        yield svc
    finally:
        await svc.aclose()


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
async def test_tag_pulled_into_the_store(
    registry: Registry,
    service: ImageService,
    busybox_image: BuiltImage,
    tmp_path: Path,
    fmt: str,
) -> None:
    await asyncio.to_thread(registry.push, busybox_image.path, "team/app:v1", fmt=fmt)
    text = f"{registry.host}/team/app:v1"
    image = await service.resolve_reference(text)
    assert image.status is ImageState.READY
    assert image.name == text
    if fmt == "oci":
        assert image.digest == busybox_image.digest
    expected_type = m.OCI_MANIFEST if fmt == "oci" else m.DOCKER_MANIFEST
    assert image.config["entrypoint"] == busybox_image.config["config"]["Entrypoint"]
    assert [layer["media_type"] for layer in image.config["layers"]] == [
        m.OCI_LAYER_GZIP if fmt == "oci" else m.DOCKER_LAYER_GZIP
    ]
    # what nodes download: a valid OCI archive holding the registry's manifest unchanged
    _row, path = await service.archive(image.id)
    info = await asyncio.to_thread(inspect_archive, path, expected_digest=image.digest)
    assert info.digest == image.digest
    extracted = tmp_path / f"layout-{fmt}"
    extracted.mkdir()
    await asyncio.to_thread(inspect_archive, path, extract_to=extracted)
    index = json.loads((extracted / "index.json").read_text())
    assert index["manifests"][0]["mediaType"] == m.OCI_MANIFEST  # what umoci unpacks
    manifest = json.loads(
        (extracted / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text()
    )
    assert manifest["mediaType"] == m.OCI_MANIFEST
    assert (fmt == "v2s2") is (index["manifests"][0]["digest"] != image.digest)
    with tarfile.open(path) as stored:
        handle = stored.extractfile("index.json")
        assert handle is not None
        assert json.loads(handle.read())["manifests"][0]["mediaType"] == expected_type
    # a node's cache unpacks it (umoci gets the OCI twin of a Docker manifest)
    cache = await ImageCache.open(root=tmp_path / f"cache-{fmt}", max_bytes=1 << 30)

    async def fetch(dest: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, path, dest)

    unpacked = await cache.ensure(str(image.digest), fetch)
    with cache.view(unpacked) as tree:
        assert (tree / "www" / "health").read_text().strip() == "ok"
    # by digest, and again by tag: the same row, nothing pulled again
    again = await service.resolve_reference(f"{registry.host}/team/app@{image.digest}")
    assert again.id == image.id
    assert (await service.resolve_reference(text)).id == image.id


async def test_moved_tag_resolves_to_the_new_digest(
    registry: Registry, service: ImageService, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    await asyncio.to_thread(registry.push, busybox_image.path, "app:live")
    first = await service.resolve_reference(f"{registry.host}/app:live")
    other = build_image(tmp_path / "other.tar", env=["PATH=/bin", "APP_GREETING=moved"])
    await asyncio.to_thread(registry.push, other.path, "app:live")
    second = await service.resolve_reference(f"{registry.host}/app:live")
    assert second.digest == other.digest != first.digest
    assert (await service.resolve_reference(f"{registry.host}/app@{first.digest}")).id == first.id


async def test_index_picks_linux_amd64(
    registry: Registry, service: ImageService, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    arm = build_image(tmp_path / "arm.tar", architecture="arm64")
    await asyncio.to_thread(registry.push, busybox_image.path, "multi:amd64")
    await asyncio.to_thread(registry.push, arm.path, "multi:arm64")
    ref = parse_reference(f"{registry.host}/multi:all")
    client = service._registry
    assert client is not None
    entries = []
    for tag, arch in (("arm64", "arm64"), ("amd64", "amd64")):
        got = await client.get_manifest(parse_reference(f"{registry.host}/multi:{tag}"))
        entries.append(
            {
                "mediaType": m.OCI_MANIFEST,
                "digest": got.digest,
                "size": len(got.data),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    body = json.dumps({"schemaVersion": 2, "mediaType": m.OCI_INDEX, "manifests": entries})
    await client.push_manifest(ref, body.encode(), m.OCI_INDEX)
    image = await service.resolve_reference(str(ref))
    assert image.digest == busybox_image.digest


async def test_refusals(
    registry: Registry,
    service: ImageService,
    db: Database,
    busybox_image: BuiltImage,
    tmp_path: Path,
) -> None:
    with pytest.raises(InvalidInput, match="names no registry"):
        await service.resolve_reference("app:v1")
    with pytest.raises(NotFound, match=r"MANIFEST_UNKNOWN|NAME_UNKNOWN"):
        await service.resolve_reference(f"{registry.host}/missing:v1")
    await asyncio.to_thread(registry.push, busybox_image.path, "app:v1")
    assert service._registry is not None
    fetched = await service._registry.get_manifest(parse_reference(f"{registry.host}/app:v1"))
    layer_size = json.loads(fetched.data)["layers"][0]["size"]  # fits; with the config: not
    for limit, error, message in (
        (1000, InvalidInput, "more than the limit of 1000"),
        (None, PayloadTooLarge, "bytes of blobs, more than the limit"),
    ):
        small = make_service(db, tmp_path / "small", max_bytes=limit or layer_size)
        try:
            with pytest.raises(error, match=message):
                await small.resolve_reference(f"{registry.host}/app:v1")
            assert list((tmp_path / "small" / "tmp").iterdir()) == []
        finally:
            await small.aclose()
    registry.stop()
    with pytest.raises(ServiceUnavailable, match="is unreachable"):
        await service.resolve_reference(f"{registry.host}/app:v1")


async def test_corrupt_layer_leaves_nothing(
    registry: Registry, service: ImageService, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    await asyncio.to_thread(registry.push, busybox_image.path, "app:v1")
    client = service._registry
    assert client is not None
    fetched = await client.get_manifest(parse_reference(f"{registry.host}/app:v1"))
    layer = json.loads(fetched.data)["layers"][0]["digest"]
    blob = registry.blob_path(layer)
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="does not match its sha256"):
        await service.resolve_reference(f"{registry.host}/app:v1")
    assert list((tmp_path / "images" / "tmp").iterdir()) == []
    assert list((tmp_path / "images" / "sha256").iterdir()) == []
