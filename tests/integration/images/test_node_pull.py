"""A node pulling from the platform registry itself: each blob fetched once into its blob
store (a layer two images share is fetched once, also when both start together), verified,
unpacked by the cache; the archive from the operator when the grant names no location.
A real docker-registry (pushed with skopeo), real umoci, no operator process: the operator
side of the grant is ``test_platform_publish.py``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tarfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.images import INDEX_HTML, BuiltImage, Entry, app_entries, build_image
from tests.registry import Registry, TokenServer, registry_available, start_registry
from zeitwork.agent.images import NodeImages
from zeitwork.clients.operator import OperatorClient
from zeitwork.core.errors import InvalidInput, NotFound, ServiceUnavailable
from zeitwork.images import ImageCache
from zeitwork.images.blobs import BlobStore
from zeitwork.wire.agent import ImageRef

pytestmark = pytest.mark.skipif(
    not registry_available(), reason="needs docker-registry and skopeo (scripts/bootstrap.sh)"
)


class Operator:
    """The two calls the node makes, answered from a table (grant or archive path)."""

    def __init__(self) -> None:
        self.grants: dict[uuid.UUID, dict[str, object]] = {}
        self.archives: dict[uuid.UUID, Path] = {}
        self.downloads: list[uuid.UUID] = []

    async def image_pull_grant(self, image_id: uuid.UUID) -> dict[str, object]:
        if image_id not in self.grants:
            raise NotFound("no such route")
        return self.grants[image_id]

    async def download_image(
        self, image_id: uuid.UUID, dest: Path, *, expected_digest: str | None = None
    ) -> str:
        self.downloads.append(image_id)
        await asyncio.to_thread(dest.write_bytes, self.archives[image_id].read_bytes())
        return expected_digest or ""


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[NodeImages, Operator]]:
    cache = await ImageCache.open(root=tmp_path / "node", max_bytes=1 << 30)
    operator = Operator()
    images = NodeImages(
        cache=cache, operator=cast(OperatorClient, operator), pull_from_registry=True
    )
    try:
        yield images, operator
    finally:
        await images.aclose()
        await cache.close()


def two_images(tmp_path: Path) -> tuple[BuiltImage, BuiltImage]:
    """Two versions of one app: the same base layer, a different top layer."""
    base = app_entries()
    one = build_image(tmp_path / "v1.tar", layers=[base, [Entry("www/v", b"1\n")]])
    two = build_image(tmp_path / "v2.tar", layers=[base, [Entry("www/v", b"2\n")]])
    return one, two


def blobs_of(image: BuiltImage) -> list[str]:
    layout = json.loads(_manifest_bytes(image))
    return [layout["config"]["digest"], *(layer["digest"] for layer in layout["layers"])]


def _manifest_bytes(image: BuiltImage) -> bytes:
    with tarfile.open(image.path) as tar:
        member = tar.extractfile("blobs/sha256/" + image.digest.removeprefix("sha256:"))
        assert member is not None
        return member.read()


def grant(registry: Registry, repo: str, image: BuiltImage, **extra: object) -> dict[str, object]:
    return {
        "digest": image.digest,
        "location": f"{registry.host}/{repo}@{image.digest}",
        "plain_http": True,
    } | extra


def ref_of(image: BuiltImage, name: str) -> ImageRef:
    return ImageRef(id=uuid.uuid4(), name=name, digest=image.digest, size=image.size)


async def test_a_new_version_fetches_only_its_new_layer(
    registry: Registry, node: tuple[NodeImages, Operator], tmp_path: Path
) -> None:
    images, operator = node
    one, two = two_images(tmp_path)
    for image, tag in ((one, "v1"), (two, "v2")):
        await asyncio.to_thread(registry.push, image.path, f"library/app:{tag}")
    first, second = ref_of(one, "app:v1"), ref_of(two, "app:v2")
    operator.grants[first.id] = grant(registry, "library/app", one)
    operator.grants[second.id] = grant(registry, "library/app", two)

    unpacked = await images.ensure(first)
    with images.cache.view(unpacked) as tree:
        assert (tree / "www/v").read_bytes() == b"1\n"
        assert (tree / "www/index.html").read_bytes() == INDEX_HTML
    assert sorted(images.blobs.fetched) == sorted(blobs_of(one))  # config, base, top: once

    unpacked = await images.ensure(second)
    with images.cache.view(unpacked) as tree:
        assert (tree / "www/v").read_bytes() == b"2\n"
    config2, base, top2 = blobs_of(two)
    assert base == blobs_of(one)[1]
    assert sorted(images.blobs.fetched[3:]) == sorted([config2, top2])  # not the shared base
    assert operator.downloads == []  # nothing came from the operator


async def test_two_images_starting_together_fetch_their_shared_layer_once(
    registry: Registry, node: tuple[NodeImages, Operator], tmp_path: Path
) -> None:
    images, operator = node
    one, two = two_images(tmp_path)
    refs = []
    for image, tag in ((one, "v1"), (two, "v2")):
        await asyncio.to_thread(registry.push, image.path, f"library/app:{tag}")
        ref = ref_of(image, tag)
        operator.grants[ref.id] = grant(registry, "library/app", image)
        refs.append(ref)
    await asyncio.gather(*(images.ensure(r) for r in [*refs, *refs]))
    fetched = images.blobs.fetched
    assert sorted(fetched) == sorted(set(blobs_of(one)) | set(blobs_of(two)))
    assert len(fetched) == len(set(fetched)) == 5


async def test_no_location_means_the_archive_from_the_operator(
    node: tuple[NodeImages, Operator], busybox_image: BuiltImage
) -> None:
    images, operator = node
    granted, unknown = ref_of(busybox_image, "a"), ref_of(busybox_image, "b")
    operator.grants[granted.id] = {"digest": busybox_image.digest, "location": None}
    operator.archives[granted.id] = busybox_image.path
    operator.archives[unknown.id] = busybox_image.path
    await images.ensure(granted)
    assert operator.downloads == [granted.id]
    images.release(busybox_image.digest)
    assert await images.cache.remove(busybox_image.digest)
    await images.ensure(unknown)  # an operator without the pull route: NotFound → archive
    assert operator.downloads == [granted.id, unknown.id]
    assert images.blobs.fetched == []


async def test_a_corrupted_blob_fails_the_pull_and_is_not_kept(
    registry: Registry, node: tuple[NodeImages, Operator], busybox_image: BuiltImage
) -> None:
    images, operator = node
    await asyncio.to_thread(registry.push, busybox_image.path, "library/app:v1")
    layer = blobs_of(busybox_image)[1]
    path = registry.blob_path(layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    ref = ref_of(busybox_image, "app")
    operator.grants[ref.id] = grant(registry, "library/app", busybox_image)
    with pytest.raises(InvalidInput, match="does not match its sha256"):
        await images.ensure(ref)
    assert not images.blobs.has(layer)
    assert images.cache.get(busybox_image.digest) is None


async def test_a_blob_corrupted_on_the_node_is_discarded_and_fetched_again(
    registry: Registry, node: tuple[NodeImages, Operator], busybox_image: BuiltImage
) -> None:
    images, operator = node
    await asyncio.to_thread(registry.push, busybox_image.path, "library/app:v1")
    ref = ref_of(busybox_image, "app")
    operator.grants[ref.id] = grant(registry, "library/app", busybox_image)
    await images.ensure(ref)
    images.release(busybox_image.digest)
    assert await images.cache.remove(busybox_image.digest)
    images.cache.max_bytes = 1  # and its unpacked layer: the next start reads the blob
    await images.cache.evict()
    images.cache.max_bytes = 1 << 30
    layer = images.blobs.path(blobs_of(busybox_image)[1])
    data = bytearray(layer.read_bytes())  # the disk flips a byte of the stored layer
    data[100] ^= 0xFF
    layer.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="does not match"):
        await images.ensure(ref)
    assert not layer.exists()  # discarded
    unpacked = await images.ensure(ref)  # fetched again, whole
    with images.cache.view(unpacked) as tree:
        assert (tree / "www/health").read_bytes() == b"ok\n"
    assert images.blobs.fetched.count(blobs_of(busybox_image)[1]) == 2


async def test_a_grant_for_other_bytes_is_refused(
    registry: Registry, node: tuple[NodeImages, Operator], tmp_path: Path
) -> None:
    images, operator = node
    one, two = two_images(tmp_path)
    await asyncio.to_thread(registry.push, two.path, "library/app:v2")
    ref = ref_of(one, "app")
    operator.grants[ref.id] = grant(registry, "library/app", two) | {"digest": one.digest}
    with pytest.raises(InvalidInput, match="is not"):
        await images.ensure(ref)


async def test_a_registry_that_is_down_is_a_clear_error(
    node: tuple[NodeImages, Operator], busybox_image: BuiltImage
) -> None:
    from tests.registry import free_port

    images, operator = node
    ref = ref_of(busybox_image, "app")
    operator.grants[ref.id] = {
        "digest": busybox_image.digest,
        "location": f"127.0.0.1:{free_port()}/library/app@{busybox_image.digest}",
    }
    with pytest.raises(ServiceUnavailable, match="unreachable"):
        await images.ensure(ref)


async def test_a_pull_token_from_the_grant_is_used(
    node: tuple[NodeImages, Operator], busybox_image: BuiltImage, tmp_path: Path
) -> None:
    images, operator = node
    tokens = TokenServer("operator", "s3cret", tmp_path)
    tokens.start()
    try:
        with start_registry(tmp_path / "registry", auth=tokens) as reg:
            await asyncio.to_thread(reg.push, busybox_image.path, "library/app:v1")
            ref = ref_of(busybox_image, "app")
            token = tokens.token("repository:library/app:pull")
            operator.grants[ref.id] = grant(reg, "library/app", busybox_image, token=token)
            before = len(tokens.requests)
            unpacked = await images.ensure(ref)
            with images.cache.view(unpacked) as tree:
                assert (tree / "www/health").read_bytes() == b"ok\n"
            assert len(tokens.requests) == before  # no credentials of its own were needed
    finally:
        tokens.stop()


async def test_the_blob_store_keeps_the_most_recent_blobs_under_its_cap(
    tmp_path: Path,
) -> None:
    store = BlobStore(root=tmp_path / "blobs", max_bytes=250)
    digests = []
    for i in range(3):
        data = bytes([i]) * 100
        digest = "sha256:" + hashlib.sha256(data).hexdigest()

        async def write(path: Path, data: bytes = data) -> None:
            await asyncio.to_thread(path.write_bytes, data)

        await store.ensure(digest, 100, write)
        digests.append(digest)
        await asyncio.sleep(0.01)
    assert store.prune(keep=[digests[0]]) == [digests[1]]
    assert store.has(digests[0]) and store.has(digests[2])
    with pytest.raises(InvalidInput, match="its descriptor says 99"):
        await store.ensure("sha256:" + "0" * 64, 99, write)
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
