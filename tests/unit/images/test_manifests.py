"""Manifests and indexes: OCI and Docker schema 2, platform choice, refusals naming the type."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.images import manifests as m
from zeitwork.images.manifests import (
    Compression,
    ImageIndex,
    ImageManifest,
    Platform,
    digest_of,
    parse_manifest,
    select_platform,
    to_oci_manifest,
)

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


def desc(media_type: str, digest: str = D2, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def manifest(
    media_type: str | None = m.OCI_MANIFEST,
    config: str = m.OCI_CONFIG,
    layers: tuple[str, ...] = (m.OCI_LAYER_GZIP,),
    **extra: Any,
) -> bytes:
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "config": desc(config, D1, 100),
        "layers": [desc(t, D2, 1000) for t in layers],
        **extra,
    }
    if media_type is not None:
        body["mediaType"] = media_type
    return json.dumps(body).encode()


def index(*entries: dict[str, Any], media_type: str | None = m.OCI_INDEX) -> bytes:
    body: dict[str, Any] = {"schemaVersion": 2, "manifests": list(entries)}
    if media_type is not None:
        body["mediaType"] = media_type
    return json.dumps(body).encode()


def plat(os: str, arch: str, variant: str | None = None) -> dict[str, Any]:
    p = {"os": os, "architecture": arch}
    if variant:
        p["variant"] = variant
    return {"platform": p}


@pytest.mark.parametrize(
    ("media_type", "config", "layer", "compression"),
    [
        (m.OCI_MANIFEST, m.OCI_CONFIG, m.OCI_LAYER_GZIP, Compression.GZIP),
        (m.OCI_MANIFEST, m.OCI_CONFIG, m.OCI_LAYER_TAR, Compression.NONE),
        (m.DOCKER_MANIFEST, m.DOCKER_CONFIG, m.DOCKER_LAYER_GZIP, Compression.GZIP),
        (m.DOCKER_MANIFEST, m.DOCKER_CONFIG, m.DOCKER_LAYER_TAR, Compression.NONE),
    ],
)
def test_manifests(media_type: str, config: str, layer: str, compression: Compression) -> None:
    data = manifest(media_type, config, (layer, layer))
    for header in (media_type, None, "application/json", f"{media_type}; charset=utf-8"):
        parsed = parse_manifest(data, header)
        assert isinstance(parsed, ImageManifest)
        assert parsed.media_type == media_type
        assert parsed.digest == digest_of(data)
        assert parsed.config.digest == D1
        assert [x.compression for x in parsed.layers] == [compression, compression]
        assert parsed.layers[0].size == 1000
        assert parsed.is_docker is (media_type == m.DOCKER_MANIFEST)


def test_oci_without_media_type_is_told_by_its_fields() -> None:
    assert isinstance(parse_manifest(manifest(None)), ImageManifest)
    assert isinstance(parse_manifest(index(desc(m.OCI_MANIFEST), media_type=None)), ImageIndex)
    assert isinstance(parse_manifest(manifest(None), m.OCI_MANIFEST), ImageManifest)


@pytest.mark.parametrize(
    ("data", "header", "message"),
    [
        (b'{"schemaVersion": 1, "name": "x"}', None, "schema 1"),
        (manifest(m.DOCKER_SCHEMA1), None, m.DOCKER_SCHEMA1),
        (manifest(), m.DOCKER_SCHEMA1_SIGNED, m.DOCKER_SCHEMA1_SIGNED),
        (manifest("application/vnd.example+json"), None, "application/vnd.example+json"),
        (manifest(), m.DOCKER_MANIFEST, "served as"),
        (manifest(layers=(m.DOCKER_FOREIGN_LAYER,)), None, m.DOCKER_FOREIGN_LAYER),
        (
            manifest(layers=("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",)),
            None,
            "nondistributable.v1.tar+gzip is a foreign",
        ),
        (manifest(layers=(m.OCI_LAYER_ZSTD,)), None, "tar+zstd is not supported: zstd"),
        (manifest(layers=("text/plain",)), None, "layer media type text/plain"),
        (manifest(config="application/octet-stream"), None, "config media type"),
        (manifest(layers=(m.OCI_LAYER_GZIP,) * 128), None, "more than 127"),
        (b"not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"schemaVersion": 3}', None, "schemaVersion must be 2"),
        (b'{"schemaVersion": 2, "mediaType": 7}', None, "mediaType must be a string"),
        (b" " * (m.MAX_MANIFEST_BYTES + 1), None, "larger than"),
        (json.dumps({"schemaVersion": 2, "layers": []}).encode(), None, "config: descriptor"),
        (json.dumps({"schemaVersion": 2, "config": desc(m.OCI_CONFIG)}).encode(), None, "list"),
        (index(desc(m.OCI_MANIFEST, "sha256:12")), None, "is not sha256:<hex>"),
        (index(desc(m.OCI_MANIFEST, size=-1)), None, "non-negative"),
        (index(desc(m.OCI_MANIFEST, size=True)), None, "non-negative"),
        (index({"digest": D1, "size": 1}), None, "no mediaType"),
        (index(desc(m.OCI_MANIFEST, platform="linux")), None, "platform must be an object"),
        (index(desc(m.OCI_MANIFEST, platform={"os": "linux"})), None, "os and architecture"),
        (
            index(desc(m.OCI_MANIFEST, platform={"os": "l", "architecture": "a", "variant": 1})),
            None,
            "variant",
        ),
        (index(*[desc(m.OCI_MANIFEST)] * 1025), None, "more than 1024"),
        (
            b'{"schemaVersion": 2, "mediaType": "%s", "manifests": {}}' % m.OCI_INDEX.encode(),
            None,
            "manifests must be a list",
        ),
        (b'{"schemaVersion": 2, "layers": [], "config": 1}', None, "must be an object"),
    ],
)
def test_refusals(data: bytes, header: str | None, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_manifest(data, header)
    assert message in info.value.detail


def test_external_urls_refused() -> None:
    body = json.loads(manifest())
    body["layers"][0]["urls"] = ["https://example.com/layer"]
    with pytest.raises(InvalidInput, match="external URLs"):
        parse_manifest(json.dumps(body).encode())


def test_config_and_layer_size_limits() -> None:
    body = json.loads(manifest())
    body["config"]["size"] = m.MAX_CONFIG_BYTES + 1
    with pytest.raises(InvalidInput, match="config is larger"):
        parse_manifest(json.dumps(body).encode())
    assert isinstance(parse_manifest(manifest(), max_layer_bytes=1000), ImageManifest)
    with pytest.raises(InvalidInput, match="more than the limit of 999"):
        parse_manifest(manifest(), max_layer_bytes=999)


def test_zstd_accepted_when_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(m, "ZSTD_SUPPORTED", True)
    parsed = parse_manifest(manifest(layers=(m.OCI_LAYER_ZSTD,)))
    assert isinstance(parsed, ImageManifest)
    assert parsed.layers[0].compression is Compression.ZSTD


def test_unsupported_layer_lists_what_is() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_manifest(manifest(layers=("x/y",)))
    assert m.DOCKER_LAYER_GZIP in info.value.detail
    assert "zstd" not in info.value.detail


@pytest.mark.parametrize("media_type", [m.OCI_INDEX, m.DOCKER_LIST])
def test_platform_selection(media_type: str) -> None:
    entry = m.DOCKER_MANIFEST if media_type == m.DOCKER_LIST else m.OCI_MANIFEST
    data = index(
        desc(entry, D1, **plat("linux", "arm64", "v8")),
        desc(entry, D2, **plat("linux", "amd64")),
        desc(entry, D3, **plat("linux", "amd64")),
        desc(entry, D1, **plat("windows", "amd64")),
        media_type=media_type,
    )
    parsed = parse_manifest(data, media_type)
    assert isinstance(parsed, ImageIndex)
    assert parsed.media_type == media_type
    assert select_platform(parsed).digest == D2  # the first match, as Docker
    assert select_platform(parsed, Platform("linux", "arm64", "v8")).digest == D1
    assert select_platform(parsed, Platform("linux", "arm64")).digest == D1
    with pytest.raises(InvalidInput) as info:
        select_platform(parsed, Platform("linux", "arm64", "v7"))
    assert "linux/arm64/v7" in info.value.detail
    assert "linux/amd64, linux/arm64/v8, windows/amd64" in info.value.detail


def test_selection_skips_attestations_indexes_and_unnamed() -> None:
    parsed = parse_manifest(
        index(
            desc(m.OCI_MANIFEST, D1),
            desc(m.OCI_INDEX, D2, **plat("linux", "amd64")),
            desc("application/vnd.in-toto+json", D3, **plat("linux", "amd64")),
        )
    )
    assert isinstance(parsed, ImageIndex)
    with pytest.raises(InvalidInput, match="no manifest for linux/amd64"):
        select_platform(parsed)
    empty = parse_manifest(index())
    assert isinstance(empty, ImageIndex)
    with pytest.raises(InvalidInput, match="none named"):
        select_platform(empty)
    schema1 = parse_manifest(index(desc(m.DOCKER_SCHEMA1, **plat("linux", "amd64"))))
    assert isinstance(schema1, ImageIndex)
    with pytest.raises(InvalidInput, match="schema 1"):
        select_platform(schema1)


def test_to_oci_manifest() -> None:
    docker = parse_manifest(
        manifest(m.DOCKER_MANIFEST, m.DOCKER_CONFIG, (m.DOCKER_LAYER_GZIP, m.DOCKER_LAYER_TAR))
    )
    assert isinstance(docker, ImageManifest)
    oci = parse_manifest(to_oci_manifest(docker))
    assert isinstance(oci, ImageManifest)
    assert oci.media_type == m.OCI_MANIFEST
    assert oci.config.media_type == m.OCI_CONFIG
    assert [x.descriptor.media_type for x in oci.layers] == [m.OCI_LAYER_GZIP, m.OCI_LAYER_TAR]
    assert [x.digest for x in oci.layers] == [x.digest for x in docker.layers]
    assert oci.config.digest == docker.config.digest
    assert to_oci_manifest(docker) == to_oci_manifest(docker)  # deterministic
