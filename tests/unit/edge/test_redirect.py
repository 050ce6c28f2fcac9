from __future__ import annotations

import pytest

from zeitwork.edge.redirect import host_name, https_location


def _has(name: str) -> bool:
    return name in {"app.example.com"}


def test_redirects_hosts_with_certificates() -> None:
    assert (
        https_location(b"app.example.com", b"/a?b=1", https_port=443, has_certificate=_has)
        == b"https://app.example.com/a?b=1"
    )
    assert (
        https_location(b"APP.example.com:8083", b"/x", https_port=8443, has_certificate=_has)
        == b"https://app.example.com:8443/x"
    )


def test_no_redirect_for_challenge_unknown_or_bad_hosts() -> None:
    acme = b"/.well-known/acme-challenge/token"
    assert https_location(b"app.example.com", acme, https_port=443, has_certificate=_has) is None
    assert https_location(b"other.example.com", b"/", https_port=443, has_certificate=_has) is None
    assert https_location(None, b"/", https_port=443, has_certificate=_has) is None


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (b"app.example.com", "app.example.com"),
        (b"app.example.com.", "app.example.com"),
        (b"App.Example.com:80", "app.example.com"),
        (b"[::1]:80", None),
        (b"a b", None),
        (b"evil.com\r\nx", None),
        (b"host:port", None),
        (b"", None),
        (b"-bad.com", None),
    ],
)
def test_host_name(header: bytes, name: str | None) -> None:
    assert host_name(header) == name
