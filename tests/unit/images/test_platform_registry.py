"""ZEITWORK_REGISTRY_URL and where an image is kept in the platform registry."""

from __future__ import annotations

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.images.platform_registry import PlatformRegistry, parse_registry_url
from zeitwork.images.reference import parse_reference

DIGEST = "sha256:" + "ab" * 32


def test_the_url_forms() -> None:
    assert parse_registry_url("http://127.0.0.1:8084") == PlatformRegistry(
        "127.0.0.1:8084", "", plain_http=True
    )
    assert parse_registry_url("Reg.Example.com/team/zw/") == PlatformRegistry(
        "reg.example.com", "team/zw", plain_http=False
    )
    assert parse_registry_url("https://[::1]:5000").host == "[::1]:5000"
    assert parse_registry_url("http://127.0.0.1:8084").url == "http://127.0.0.1:8084"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ftp://reg", "scheme is http or https"),
        ("https://", "names no host"),
        ("https://user:pw@reg.example.com", "ZEITWORK_REGISTRY_USERNAME"),
        ("reg.example.com/Team", "not a repository namespace"),
        ("reg.example.com:99999", "port"),
    ],
)
def test_bad_urls_are_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(InvalidInput) as failed:
        parse_registry_url(text)
    assert says in failed.value.detail
    assert "user:pw" not in failed.value.detail


def test_images_are_kept_under_library_by_digest() -> None:
    platform = parse_registry_url("http://127.0.0.1:8084")
    assert (
        str(platform.reference("My App_v1", DIGEST)) == f"127.0.0.1:8084/library/my-app-v1@{DIGEST}"
    )
    assert (
        str(platform.reference("reg.example.com/team/web:1.4", DIGEST))
        == f"127.0.0.1:8084/library/web@{DIGEST}"
    )
    assert platform.repository_for("!!!") == "library/image"
    prefixed = parse_registry_url("reg.example.com/zw")
    assert prefixed.repository_for("app") == "zw/library/app"


def test_a_reference_into_the_platform_registry_needs_no_push() -> None:
    platform = parse_registry_url("http://127.0.0.1:8084")
    assert platform.holds(parse_reference("127.0.0.1:8084/app:v2"))
    assert not platform.holds(parse_reference("localhost:8084/app:v2"))
