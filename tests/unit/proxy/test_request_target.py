"""The pure request-target helpers of the proxy core (RFC 9112 2.2 and 3.2.2)."""

from __future__ import annotations

import pytest

from zeitwork.proxy.server import _lf_request_line, _Reject, absolute_target


@pytest.mark.parametrize(
    ("url", "authority", "path"),
    [
        (b"http://a.example/x", b"a.example", b"/x"),
        (b"https://a.example:8443/x/y?q=1", b"a.example:8443", b"/x/y?q=1"),
        (b"http://a.example", b"a.example", b"/"),
        (b"http://a.example?q", b"a.example", b"/?q"),
        (b"HTTP://A.Example/x", b"A.Example", b"/x"),
        (b"http://[2001:db8::1]:80/x", b"[2001:db8::1]:80", b"/x"),
        (b"http://a.example/x?next=http://b.example/", b"a.example", b"/x?next=http://b.example/"),
    ],
)
def test_absolute_target_splits_authority_and_origin_form(
    url: bytes, authority: bytes, path: bytes
) -> None:
    assert absolute_target(url) == (authority, path)


@pytest.mark.parametrize(
    "url", [b"http:///x", b"http://user@a.example/x", b"http://", b'http://a"b/x', b"http://a\\b/"]
)
def test_absolute_target_refuses_a_bad_authority(url: bytes) -> None:
    with pytest.raises(_Reject) as caught:
        absolute_target(url)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("data", "fixed"),
    [
        (b"GET / HTTP/1.1\nHost: a\n\n", b"GET / HTTP/1.1\r\nHost: a\n\n"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        (b"GET / HTTP/1.1\rHost: a\r\r", b"GET / HTTP/1.1\rHost: a\r\r"),  # bare CR: unchanged
        (b"GET / HTT", b"GET / HTT"),  # no line end yet
        (b"\nGET / HTTP/1.1\r\n", b"\nGET / HTTP/1.1\r\n"),  # a leading empty line is llhttp's
    ],
)
def test_a_bare_lf_ends_the_request_line(data: bytes, fixed: bytes) -> None:
    assert _lf_request_line(data) == fixed
