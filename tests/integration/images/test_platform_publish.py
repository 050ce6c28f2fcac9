"""The platform registry as the image store (``ZEITWORK_REGISTRY_URL``): every image the
operator catalogues is pushed there by digest and its location recorded; a node is granted a
credential that can only pull. A real docker-registry, a real PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.images import BuiltImage, build_image
from tests.registry import BasicAuth, Registry, TokenServer, registry_available, start_registry
from zeitwork.clients.registry import RegistryClient, RegistryCredentials, registry_http_client
from zeitwork.core.errors import AuthenticationRequired
from zeitwork.images import ArchiveStore
from zeitwork.images import manifests as m
from zeitwork.images.platform_registry import parse_registry_url
from zeitwork.images.reference import parse_reference
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.images import ImageStore
from zeitwork.operator.services.images import ImageService, PlatformSettings, location_of

pytestmark = pytest.mark.skipif(
    not registry_available(), reason="needs docker-registry and skopeo (scripts/bootstrap.sh)"
)


@pytest.fixture
async def db(migrated_database: str) -> AsyncIterator[Database]:
    database = Database(url=migrated_database, min_size=1, max_size=4, timeout=10)
    await database.open(wait=True, wait_seconds=10)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "platform") as reg:
        yield reg


def new_client() -> RegistryClient:
    return RegistryClient(
        http=registry_http_client(), accept=m.ACCEPT, max_manifest_bytes=m.MAX_MANIFEST_BYTES
    )


def make_service(db: Database, root: Path, publish: PlatformSettings | None) -> ImageService:
    return ImageService(
        images=ImageStore(db=db),
        archives=ArchiveStore(root=root),
        max_bytes=1 << 30,
        registry=new_client(),
        publish=publish,
    )


async def body(path: Path) -> AsyncIterator[bytes]:
    data = await asyncio.to_thread(path.read_bytes)
    for start in range(0, len(data), 1 << 16):
        yield data[start : start + (1 << 16)]


async def manifest_at(location: str, creds: RegistryCredentials | None = None) -> str:
    client = new_client()
    try:
        return (await client.get_manifest(parse_reference(location), credentials=creds)).digest
    finally:
        await client.aclose()


async def test_an_imported_image_is_pushed_by_digest_and_its_location_kept(
    db: Database, platform: Registry, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    publish = PlatformSettings(registry=parse_registry_url(f"http://{platform.host}"))
    service = make_service(db, tmp_path / "images", publish)
    try:
        image, created = await service.import_archive("My App", body(busybox_image.path))
        assert created
        location = location_of(image)
        assert location == f"{platform.host}/library/my-app@{busybox_image.digest}"
        assert await manifest_at(location) == busybox_image.digest  # the same bytes there
        again, created = await service.import_archive("My App", body(busybox_image.path))
        assert not created and location_of(again) == location
        grant = await service.pull_grant(image.id)
        assert grant.location == location and grant.plain_http
        assert grant.token is None and grant.password is None  # anonymous registry
    finally:
        await service.aclose()


async def test_a_docker_archive_is_pushed_as_its_converted_image(
    db: Database, platform: Registry, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    docker = tmp_path / "docker.tar"
    await asyncio.to_thread(
        subprocess.run,
        ["skopeo", "copy", "--quiet", f"oci-archive:{busybox_image.path}",
         f"docker-archive:{docker}:r.io/a:v1"],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    publish = PlatformSettings(registry=parse_registry_url(f"http://{platform.host}"))
    service = make_service(db, tmp_path / "images", publish)
    try:
        image, _ = await service.import_archive("saved", body(docker))
    finally:
        await service.aclose()
    location = location_of(image)
    assert location == f"{platform.host}/library/saved@{image.digest}"
    assert await manifest_at(location) == image.digest


async def test_a_reference_in_the_platform_registry_is_not_pushed_again(
    db: Database, platform: Registry, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    await asyncio.to_thread(platform.push, busybox_image.path, "team/app:v2")
    publish = PlatformSettings(registry=parse_registry_url(f"http://{platform.host}"))
    service = make_service(db, tmp_path / "images", publish)
    try:
        image = await service.resolve_reference(f"{platform.host}/team/app:v2")
        assert location_of(image) == f"{platform.host}/team/app@{busybox_image.digest}"
        assert not (platform.root / "docker/registry/v2/repositories/library").exists()
    finally:
        await service.aclose()


async def test_an_image_from_another_registry_is_copied_into_the_platform_one(
    db: Database, platform: Registry, tmp_path: Path
) -> None:
    built = build_image(tmp_path / "two.tar", env=("PATH=/bin", "V=2"))
    with start_registry(tmp_path / "elsewhere") as other:
        await asyncio.to_thread(other.push, built.path, "team/web:1.4", fmt="v2s2")
        publish = PlatformSettings(registry=parse_registry_url(f"http://{platform.host}/zw"))
        service = make_service(db, tmp_path / "images", publish)
        try:
            image = await service.resolve_reference(f"{other.host}/team/web:1.4")
        finally:
            await service.aclose()
    location = location_of(image)
    assert location == f"{platform.host}/zw/library/web@{image.digest}"
    assert await manifest_at(location) == image.digest  # Docker media types kept as served


async def test_a_registry_down_at_import_gets_the_image_on_first_use(
    db: Database, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    from tests.registry import free_port

    port = free_port()
    publish = PlatformSettings(registry=parse_registry_url(f"http://127.0.0.1:{port}"))
    service = make_service(db, tmp_path / "images", publish)
    try:
        image, _ = await service.import_archive("late", body(busybox_image.path))
        assert location_of(image) is None  # catalogued, served from the archive store
        down = await service.pull_grant(image.id)  # still down: the node takes the archive
        assert down.location is None and "platform registry failed" in str(down.reason)
        with start_registry(tmp_path / "platform", port=port):
            grant = await service.pull_grant(image.id)
            assert grant.location == f"127.0.0.1:{port}/library/late@{busybox_image.digest}"
            assert await manifest_at(grant.location) == busybox_image.digest
    finally:
        await service.aclose()


async def test_without_a_platform_registry_nodes_download_from_the_operator(
    db: Database, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    service = make_service(db, tmp_path / "images", None)
    try:
        image, _ = await service.import_archive("plain", body(busybox_image.path))
        assert location_of(image) is None
        grant = await service.pull_grant(image.id)
        assert grant.location is None and grant.reason == "this operator has no platform registry"
    finally:
        await service.aclose()


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def test_a_token_registry_grants_nodes_a_pull_only_token(
    db: Database, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    tokens = TokenServer("operator", "push-secret", tmp_path)
    tokens.start()
    try:
        with start_registry(tmp_path / "platform", auth=tokens) as reg:
            publish = PlatformSettings(
                registry=parse_registry_url(f"http://{reg.host}"),
                push=RegistryCredentials("operator", "push-secret"),
            )
            service = make_service(db, tmp_path / "images", publish)
            try:
                image, _ = await service.import_archive("app", body(busybox_image.path))
                grant = await service.pull_grant(image.id)
            finally:
                await service.aclose()
            assert grant.location is not None and grant.token is not None
            assert "push-secret" not in repr(grant) and grant.password is None
            assert _claims(grant.token)["access"] == [
                {"type": "repository", "name": "library/app", "actions": ["pull"]}
            ]
            node = new_client()
            try:
                ref = parse_reference(grant.location)
                node.use_token(ref, grant.token)
                assert (await node.get_manifest(ref)).digest == busybox_image.digest
                node.use_token(ref, grant.token, push=True)  # the same token cannot push
                with pytest.raises(AuthenticationRequired):
                    await node.push_blob(ref, b"not allowed")
            finally:
                await node.aclose()
    finally:
        tokens.stop()


async def test_a_basic_registry_hands_nodes_only_a_read_only_account(
    db: Database, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    with start_registry(tmp_path / "platform", auth=BasicAuth("admin", "adm1n")) as reg:
        push = RegistryCredentials("admin", "adm1n")
        url = parse_registry_url(f"http://{reg.host}")
        service = make_service(db, tmp_path / "images", PlatformSettings(url, push=push))
        try:
            image, _ = await service.import_archive("app", body(busybox_image.path))
            assert location_of(image) is not None
            grant = await service.pull_grant(image.id)
            assert grant.location is None and "ZEITWORK_REGISTRY_PULL_USERNAME" in str(grant.reason)
            assert grant.password is None and grant.token is None
        finally:
            await service.aclose()
        reader = RegistryCredentials("reader", "r3ad")
        service = make_service(db, tmp_path / "images2", PlatformSettings(url, push, reader))
        try:
            grant = await service.pull_grant(image.id)
        finally:
            await service.aclose()
        assert (grant.username, grant.password) == ("reader", "r3ad")
