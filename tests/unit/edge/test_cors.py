from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeitwork.edge.cors import CorsConfig, CorsPolicy, parse_list, policy_from


def _h(headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]) -> dict[bytes, bytes]:
    return dict(headers)


def test_exact_origin_echoed_with_credentials_and_vary() -> None:
    p = policy_from(["https://app.example.com"], credentials=True, expose_headers=["X-Total"])
    h = _h(p.response_headers(b"https://app.example.com"))
    assert h[b"access-control-allow-origin"] == b"https://app.example.com"
    assert h[b"access-control-allow-credentials"] == b"true"
    assert h[b"access-control-expose-headers"] == b"X-Total"
    assert h[b"vary"] == b"Origin"


def test_unlisted_origin_gets_no_allow_origin_but_vary() -> None:
    p = policy_from(["https://app.example.com"], credentials=True)
    assert p.response_headers(b"https://evil.example.net") == [(b"vary", b"Origin")]
    assert p.response_headers(None) == [(b"vary", b"Origin")]


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        (b"https://a.example.com", True),
        (b"https://a.b.example.com", True),
        (b"HTTPS://A.Example.COM", True),
        (b"https://example.com", False),
        (b"http://a.example.com", False),
        (b"https://evilexample.com", False),
        (b"https://a.example.com.evil.net", False),
        (b"https://a.example.com:8443", False),
        (b"https://x@.example.com", False),
        (b"https://.example.com", False),
        (b"https://a_b.example.com", False),
    ],
)
def test_wildcard_origins(origin: bytes, ok: bool) -> None:
    p = policy_from(["https://*.example.com"])
    assert p.allowed(origin) is ok


def test_star_never_with_credentials() -> None:
    with pytest.raises(ValueError, match="credentials"):
        policy_from(["*"], credentials=True)
    p = policy_from(["*"])
    assert _h(p.response_headers(b"https://any.site"))[b"access-control-allow-origin"] == b"*"


@pytest.mark.parametrize(
    "bad",
    ["app.example.com", "https://*example.com", "https://a.*.example.com", "ftp://x.y", "*.x"],
)
def test_bad_origins_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        policy_from([bad])


def test_bad_method_or_header_rejected() -> None:
    with pytest.raises(ValueError):
        policy_from(["https://a.b"], methods=["GET POST"])
    with pytest.raises(ValueError):
        policy_from(["https://a.b"], headers=["X-Bad\r\nInjected"])
    with pytest.raises(ValueError):
        CorsPolicy(CorsConfig(origins=("https://a.b",), max_age=-1))


def test_preflight() -> None:
    p = policy_from(
        ["https://app.example.com"],
        methods=["GET", "put"],
        headers=["Content-Type", "X-Token"],
        credentials=True,
        max_age=300,
    )
    assert p.is_preflight(b"OPTIONS", b"https://app.example.com", b"PUT")
    assert not p.is_preflight(b"OPTIONS", b"https://app.example.com", None)
    assert not p.is_preflight(b"GET", b"https://app.example.com", b"PUT")
    ok = p.preflight(b"https://app.example.com")
    h = _h(ok.headers)
    assert ok.status == 204
    assert h[b"access-control-allow-origin"] == b"https://app.example.com"
    assert h[b"access-control-allow-methods"] == b"GET, PUT"
    assert h[b"access-control-allow-headers"] == b"Content-Type, X-Token"
    assert h[b"access-control-max-age"] == b"300"
    assert h[b"access-control-allow-credentials"] == b"true"
    denied = p.preflight(b"https://evil.example.com")
    assert denied.status == 403
    assert b"access-control-allow-origin" not in _h(denied.headers)


def test_parse_list_and_enabled() -> None:
    assert parse_list(" a, b,,c ") == ("a", "b", "c")
    assert not policy_from([]).enabled
    assert policy_from(["https://a.b"]).enabled


@settings(deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_arbitrary_origin_never_reflected_with_credentials(origin: str) -> None:
    p = policy_from(["https://app.example.com", "https://*.example.org"], credentials=True)
    raw = origin.encode("utf-8", "surrogatepass")
    h = _h(p.response_headers(raw))
    allow = h.get(b"access-control-allow-origin")
    if allow is not None:
        low = raw.lower()
        assert low == b"https://app.example.com" or (
            low.startswith(b"https://") and low.endswith(b".example.org")
        )
