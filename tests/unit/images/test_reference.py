"""Image references: Docker's grammar, no default registry, tag/digest defaults."""

from __future__ import annotations

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.images.reference import (
    ImageReference,
    looks_like_reference,
    parse_reference,
)

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("registry.example.com/team/app:1.4", "registry.example.com", "team/app", "1.4", None),
        ("registry.example.com/app", "registry.example.com", "app", "latest", None),
        ("localhost:5000/app:v2", "localhost:5000", "app", "v2", None),
        ("localhost/app", "localhost", "app", "latest", None),
        (f"localhost:5000/app@{D}", "localhost:5000", "app", None, D),
        (f"localhost:5000/app:v2@{D}", "localhost:5000", "app", "v2", D),
        ("127.0.0.1:5000/a/b/c:x", "127.0.0.1:5000", "a/b/c", "x", None),
        ("[::1]:5000/app:v1", "[::1]:5000", "app", "v1", None),
        ("[::1]/app", "[::1]", "app", "latest", None),
        ("Registry.Example.COM/app", "registry.example.com", "app", "latest", None),
        ("docker.io/debian:bookworm", "docker.io", "library/debian", "bookworm", None),
        ("docker.io/someone/app", "docker.io", "someone/app", "latest", None),
        ("ghcr.io/o/a.b_c__d-e--f:T_1.-x", "ghcr.io", "o/a.b_c__d-e--f", "T_1.-x", None),
        ("  r.io/app:v1 ", "r.io", "app", "v1", None),
        ("my-host:443/app", "my-host:443", "app", "latest", None),
    ],
)
def test_parses(text: str, registry: str, repository: str, tag: str, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("app", "names no registry"),
        ("app:v1", "names no registry"),
        ("team/app:v1", "names no registry"),
        ("debian", "Docker Hub is not assumed"),
        ("https://r.io/app", "without a scheme"),
        ("r.io/app v1", "white space"),
        ("r.io/", "no repository"),
        ("r.io/:v1", "no repository"),
        ("r.io/App", "lowercase"),
        ("r.io/a//b", "component ''"),
        ("r.io/-a", "not valid"),
        ("r.io/a-", "not valid"),
        ("r.io/a...b", "not valid"),
        ("r.io/a___b", "not valid"),
        ("r.io/app:", "tag ''"),
        ("r.io/app:.x", "tag"),
        ("r.io/app:-x", "tag"),
        ("r.io/app:" + "t" * 129, "at most 128"),
        ("r.io/app:a/b", "not valid"),
        ("r.io/app@", "empty digest"),
        ("r.io/app@sha256:abc", "sha256:<64 lowercase hex>"),
        ("r.io/app@sha256:" + "AB" * 32, "sha256:<64 lowercase hex>"),
        ("r.io/app@sha512:" + "ab" * 64, "only sha256"),
        ("r.io:0/app", "port"),
        ("r.io:70000/app", "port"),
        ("r.io:x/app", "port"),
        ("-bad.io/app", "not a valid host name"),
        ("bad_host.io/app", "not a valid host name"),
        ("::1:5000/app", "IPv6"),
        ("[::1/app", "unclosed"),
        ("[zz]:5000/app", "IPv6"),
        ("[::1]x/app", "invalid registry"),
        ("r.io/" + "a" * 260, "longer than 255"),
        ("r.io/" + "a" * 600, "longer than 512"),
    ],
)
def test_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_reference(text)
    assert message in info.value.detail


def test_no_registry_says_how_to_write_one() -> None:
    with pytest.raises(InvalidInput) as info:
        parse_reference("app:v1")
    assert "localhost:5000/app:v1" in info.value.detail
    assert "docker.io/library/app:v1" in info.value.detail


def test_str_round_trips() -> None:
    for text in ("r.io/a/b:v1", f"localhost:5000/app@{D}", f"r.io/app:v2@{D}", "[::1]:5/a:x"):
        assert str(parse_reference(text)) == text
    assert str(parse_reference("r.io/app")) == "r.io/app:latest"


def test_manifest_reference_endpoint_and_pinning() -> None:
    ref = parse_reference("docker.io/debian")
    assert ref.endpoint == "registry-1.docker.io"
    assert ref.manifest_reference == "latest"
    pinned = ref.pinned(D)
    assert pinned.manifest_reference == D
    assert pinned.tag == "latest"
    assert str(pinned) == f"docker.io/library/debian:latest@{D}"
    assert parse_reference("localhost:5000/a").endpoint == "localhost:5000"
    assert ImageReference("r.io", "a", None, None).manifest_reference == "latest"
    with pytest.raises(InvalidInput):
        ref.pinned("sha256:nothex")


def test_looks_like_reference() -> None:
    assert looks_like_reference("localhost:5000/app:v1")
    assert not looks_like_reference("6f1b1b4e-2c2a-4d4b-9a55-1f0e7f3b8a11")
    assert not looks_like_reference("app")
