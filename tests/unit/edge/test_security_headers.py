from __future__ import annotations

import pytest

from zeitwork.edge.security_headers import SecurityHeaders, SecurityHeadersConfig


def test_hsts_only_on_https() -> None:
    sh = SecurityHeaders(SecurityHeadersConfig(hsts_include_subdomains=True, hsts_preload=True))
    https: list[tuple[bytes, bytes]] = []
    sh.apply(https, https=True)
    plain: list[tuple[bytes, bytes]] = []
    sh.apply(plain, https=False)
    assert dict(https)[b"strict-transport-security"] == (
        b"max-age=31536000; includeSubDomains; preload"
    )
    assert b"strict-transport-security" not in dict(plain)
    for headers in (https, plain):
        d = dict(headers)
        assert d[b"x-content-type-options"] == b"nosniff"
        assert d[b"x-frame-options"] == b"SAMEORIGIN"
        assert d[b"referrer-policy"] == b"strict-origin-when-cross-origin"
        assert b"permissions-policy" in d
        assert b"content-security-policy" not in d


def test_app_headers_kept_unless_override() -> None:
    sh = SecurityHeaders(SecurityHeadersConfig(content_security_policy="default-src 'self'"))
    # names arrive lower-case (the proxy core lowers them)
    headers = [(b"x-frame-options", b"DENY"), (b"content-type", b"text/html")]
    sh.apply(headers, https=True)
    d = dict(headers)
    assert d[b"x-frame-options"] == b"DENY"
    assert sum(1 for k, _ in headers if k == b"x-frame-options") == 1
    assert d[b"content-security-policy"] == b"default-src 'self'"

    forced = SecurityHeaders(SecurityHeadersConfig(override=frozenset({"X-Frame-Options"})))
    headers = [(b"x-frame-options", b"ALLOWALL"), (b"content-type", b"text/html")]
    forced.apply(headers, https=False)
    values = [v for k, v in headers if k == b"x-frame-options"]
    assert values == [b"SAMEORIGIN"]
    assert (b"content-type", b"text/html") in headers
    # an overridden header the policy does not set itself is dropped all the same
    strip = SecurityHeaders(SecurityHeadersConfig(override=frozenset({"Server"})))
    headers = [(b"server", b"nginx"), (b"content-type", b"text/html")]
    strip.apply(headers, https=False)
    assert b"server" not in dict(headers)


def test_disabled_headers_and_per_domain_merge() -> None:
    base = SecurityHeadersConfig()
    quiet = SecurityHeaders(
        base.merged(
            hsts_max_age=0,
            content_type_options=False,
            frame_options=None,
            referrer_policy=None,
            permissions_policy=None,
        )
    )
    headers: list[tuple[bytes, bytes]] = []
    quiet.apply(headers, https=True)
    assert headers == []
    assert quiet.headers_for(https=True) == ()


@pytest.mark.parametrize(
    "config",
    [
        SecurityHeadersConfig(frame_options="ALLOW-FROM x"),
        SecurityHeadersConfig(hsts_max_age=-1),
        SecurityHeadersConfig(content_security_policy="a\r\nSet-Cookie: x"),
    ],
)
def test_bad_config_rejected(config: SecurityHeadersConfig) -> None:
    with pytest.raises(ValueError):
        SecurityHeaders(config)
