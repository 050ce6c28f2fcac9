"""The registry client against a real registry (Debian's docker-registry on a free port):
OCI and Docker media types pushed by skopeo, tag and digest, basic and bearer auth, pushes
monolithic and chunked, a corrupted blob, a registry down or stopped mid-fetch."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import BuiltImage
from tests.registry import BasicAuth, Registry, TokenServer, registry_available, start_registry
from zeitwork.clients.registry import (
    RegistryClient,
    RegistryCredentials,
    registry_http_client,
)
from zeitwork.core.errors import AuthenticationRequired, InvalidInput, NotFound, ServiceUnavailable
from zeitwork.images import manifests as m
from zeitwork.images.manifests import ImageManifest, parse_manifest
from zeitwork.images.reference import parse_reference

pytestmark = pytest.mark.skipif(
    not registry_available(), reason="needs docker-registry and skopeo (scripts/bootstrap.sh)"
)

USER = BasicAuth("deployer", "s3cret-pass")


def new_client(http: httpx.AsyncClient) -> RegistryClient:
    return RegistryClient(http=http, accept=m.ACCEPT, max_manifest_bytes=m.MAX_MANIFEST_BYTES)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with start_registry(tmp_path / "registry") as reg:
        yield reg


@pytest.fixture
async def client() -> AsyncIterator[RegistryClient]:
    http = registry_http_client()
    try:
        yield new_client(http)
    finally:
        await http.aclose()


async def pull(
    client: RegistryClient, ref_text: str, dest: Path, creds: RegistryCredentials | None = None
) -> ImageManifest:
    ref = parse_reference(ref_text)
    dest.mkdir(exist_ok=True)
    fetched = await client.get_manifest(ref, credentials=creds)
    manifest = parse_manifest(fetched.data, fetched.media_type)
    assert isinstance(manifest, ImageManifest)
    config = await client.read_blob(ref, manifest.config.digest, credentials=creds)
    assert json.loads(config)["os"] == "linux"
    for layer in manifest.layers:
        size = await client.download_blob(
            ref, layer.digest, dest / layer.digest, size=layer.size, credentials=creds
        )
        assert size == layer.size == (dest / layer.digest).stat().st_size
    return manifest


async def test_oci_image_by_tag_and_digest(
    registry: Registry, client: RegistryClient, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    await asyncio.to_thread(registry.push, busybox_image.path, "team/app:v1")
    ref = parse_reference(f"{registry.host}/team/app:v1")
    digest = await client.resolve(ref)
    assert digest == busybox_image.digest  # skopeo keeps the OCI manifest's bytes
    manifest = await pull(client, str(ref), tmp_path)
    assert manifest.media_type == m.OCI_MANIFEST
    assert manifest.digest == digest
    by_digest = await pull(client, f"{registry.host}/team/app@{digest}", tmp_path / "again")
    assert by_digest == manifest


async def test_docker_schema2_image(
    registry: Registry, client: RegistryClient, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    await asyncio.to_thread(registry.push, busybox_image.path, "app:docker", fmt="v2s2")
    manifest = await pull(client, f"{registry.host}/app:docker", tmp_path)
    assert manifest.media_type == m.DOCKER_MANIFEST
    assert manifest.config.media_type == m.DOCKER_CONFIG
    assert {layer.descriptor.media_type for layer in manifest.layers} == {m.DOCKER_LAYER_GZIP}
    assert manifest.digest != busybox_image.digest  # another manifest of the same image


async def test_unknown_tag_and_repository(registry: Registry, client: RegistryClient) -> None:
    with pytest.raises(NotFound, match=r"MANIFEST_UNKNOWN|NAME_UNKNOWN"):
        await client.get_manifest(parse_reference(f"{registry.host}/nothing:here"))


async def test_push_monolithic_and_chunked_then_manifest(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    ref = parse_reference(f"{registry.host}/pushed:v1")
    small = b"a config-sized blob"
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    d_small = await client.push_blob(ref, small)
    d_big = await client.push_blob(ref, big, chunk_size=1024 * 1024)
    assert await client.blob_exists(ref, d_small) and await client.blob_exists(ref, d_big)
    assert await client.push_blob(ref, small) == d_small  # already there: skipped
    assert await client.read_blob(ref, d_small) == small
    out = tmp_path / "out"
    await client.download_blob(ref, d_big, out, size=big.stat().st_size)
    assert out.read_bytes() == big.read_bytes()
    config = json.dumps(
        {"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": []}}
    ).encode()
    d_config = await client.push_blob(ref, config)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": m.OCI_MANIFEST,
            "config": {"mediaType": m.OCI_CONFIG, "digest": d_config, "size": len(config)},
            "layers": [],
        }
    ).encode()
    digest = await client.push_manifest(ref, body, m.OCI_MANIFEST)
    assert await client.resolve(ref) == digest
    assert (await client.get_manifest(ref)).data == body


async def test_basic_auth(
    tmp_path: Path, client: RegistryClient, busybox_image: BuiltImage
) -> None:
    with start_registry(tmp_path / "registry", auth=USER) as registry:
        await asyncio.to_thread(registry.push, busybox_image.path, "private:v1")
        text = f"{registry.host}/private:v1"
        creds = RegistryCredentials(USER.username, USER.password)
        manifest = await pull(client, text, tmp_path, creds)
        assert manifest.digest == busybox_image.digest
        with pytest.raises(AuthenticationRequired, match="requires credentials") as anon:
            await new_client(client._http).get_manifest(parse_reference(text))
        with pytest.raises(AuthenticationRequired, match="refused the credentials") as wrong:
            await new_client(client._http).get_manifest(
                parse_reference(text), credentials=RegistryCredentials(USER.username, "nope")
            )
        for error in (anon.value, wrong.value):
            assert USER.password not in str(error) and "nope" not in str(error)
        assert USER.password not in repr(creds)


async def test_bearer_token_flow(
    tmp_path: Path, client: RegistryClient, busybox_image: BuiltImage
) -> None:
    tokens = TokenServer("deployer", "t0ken-pass", tmp_path)
    tokens.start()
    try:
        with start_registry(tmp_path / "registry", auth=tokens) as registry:
            await asyncio.to_thread(registry.push, busybox_image.path, "team/app:v1")
            text = f"{registry.host}/team/app:v1"
            creds = RegistryCredentials("deployer", "t0ken-pass")
            before = len(tokens.requests)
            manifest = await pull(client, text, tmp_path, creds)
            assert manifest.digest == busybox_image.digest
            asked = tokens.requests[before:]
            assert len(asked) == 1  # one token for the manifest, config and layers
            assert asked[0]["scope"] == ["repository:team/app:pull"]
            assert asked[0]["service"] == [tokens.service]
            with pytest.raises(AuthenticationRequired, match=r"token service .* refused"):
                await new_client(client._http).get_manifest(
                    parse_reference(text), credentials=RegistryCredentials("deployer", "bad")
                )
    finally:
        tokens.stop()


async def test_corrupted_blob_is_refused_and_not_kept(
    registry: Registry, client: RegistryClient, busybox_image: BuiltImage, tmp_path: Path
) -> None:
    await asyncio.to_thread(registry.push, busybox_image.path, "app:v1")
    ref = parse_reference(f"{registry.host}/app:v1")
    fetched = await client.get_manifest(ref)
    manifest = parse_manifest(fetched.data, fetched.media_type)
    assert isinstance(manifest, ImageManifest)
    layer = manifest.layers[0]
    blob = registry.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped
    blob.write_bytes(bytes(data))
    dest = tmp_path / "layer"
    with pytest.raises(InvalidInput, match="does not match its sha256"):
        await client.download_blob(ref, layer.digest, dest, size=layer.size)
    assert not dest.exists()
    config = registry.blob_path(manifest.config.digest)
    config.write_bytes(config.read_bytes()[:-1] + b" ")
    with pytest.raises(InvalidInput, match="does not match its sha256"):
        await client.read_blob(ref, manifest.config.digest)


async def test_registry_down(registry: Registry, client: RegistryClient) -> None:
    registry.stop()
    with pytest.raises(ServiceUnavailable, match=f"registry {registry.host} is unreachable"):
        await client.resolve(parse_reference(f"{registry.host}/app:v1"))


async def test_registry_stopped_mid_fetch(
    registry: Registry, client: RegistryClient, tmp_path: Path
) -> None:
    ref = parse_reference(f"{registry.host}/big:v1")
    source = tmp_path / "source"
    source.write_bytes(os.urandom(96 * 1024 * 1024))
    digest = await client.push_blob(ref, source, chunk_size=32 * 1024 * 1024)
    dest = tmp_path / "dest"
    task = asyncio.create_task(client.download_blob(ref, digest, dest, size=source.stat().st_size))
    deadline = asyncio.get_running_loop().time() + 20
    while not (dest.exists() and dest.stat().st_size > 0):
        assert not task.done(), "the download ended before the registry was stopped"
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.002)  # polling the probe (the file growing)
    registry.process.kill()
    with pytest.raises(ServiceUnavailable, match=r"stopped answering|unreachable"):
        await task
    assert not dest.exists()
