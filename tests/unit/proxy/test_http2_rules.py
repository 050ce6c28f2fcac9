"""The pure rules of HTTP/2 at the proxy: h2 request -> HTTP/1.1 fields, HTTP/1.1 response
fields -> h2 fields, and the rapid-reset budget."""

from __future__ import annotations

import pytest

from zeitwork.proxy.h2_rules import (
    H2Limits,
    H2RequestError,
    ResetBudget,
    request_fields,
    response_headers,
)
from zeitwork.proxy.types import Headers

_GET: Headers = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"app.test"),
    (b":path", b"/a?b=1"),
]


def test_a_get_becomes_an_origin_form_request_with_host_from_authority() -> None:
    out = request_fields([*_GET, (b"accept", b"*/*")], has_body=False)
    assert (out.method, out.target) == (b"GET", b"/a?b=1")
    assert out.fields == [(b"host", b"app.test"), (b"accept", b"*/*")]
    assert not out.chunked


def test_a_body_without_length_is_chunked_and_a_length_is_kept() -> None:
    post = [(b":method", b"POST"), *_GET[1:]]
    chunked = request_fields(post, has_body=True)
    assert chunked.chunked
    assert chunked.fields[-1] == (b"transfer-encoding", b"chunked")
    sized = request_fields([*post, (b"content-length", b"5")], has_body=True)
    assert not sized.chunked
    assert (b"content-length", b"5") in sized.fields
    assert all(name != b"transfer-encoding" for name, _ in sized.fields)


def test_cookies_are_joined_and_te_trailers_dropped() -> None:
    out = request_fields(
        [
            *_GET,
            (b"cookie", b"a=1"),
            (b"te", b"trailers"),
            (b"cookie", b"b=2"),
        ],
        has_body=False,
    )
    assert out.fields == [(b"host", b"app.test"), (b"cookie", b"a=1; b=2")]


def test_hop_by_hop_fields_are_not_forwarded() -> None:
    out = request_fields([*_GET, (b"proxy-authorization", b"x"), (b"x-a", b"1")], has_body=False)
    assert out.fields == [(b"host", b"app.test"), (b"x-a", b"1")]


def test_host_is_used_without_authority_and_must_match_it() -> None:
    no_authority = [f for f in _GET if f[0] != b":authority"]
    only_host = request_fields([*no_authority, (b"host", b"other.test")], has_body=False)
    assert only_host.fields == [(b"host", b"other.test")]
    same = request_fields([*_GET, (b"host", b"APP.test")], has_body=False)
    assert [name for name, _ in same.fields].count(b"host") == 1
    with pytest.raises(H2RequestError) as err:
        request_fields([*_GET, (b"host", b"evil.test")], has_body=False)
    assert err.value.status == 400
    with pytest.raises(H2RequestError, match="missing :authority"):
        request_fields(no_authority, has_body=False)


def test_what_the_http1_parser_takes_is_taken() -> None:
    """Methods llhttp knows, obs-text and HTAB inside values, visible ASCII in the target."""
    for method in (b"PURGE", b"PROPFIND", b"M-SEARCH", b"DELETE"):
        assert request_fields([(b":method", method), *_GET[1:]], has_body=False).method == method
    out = request_fields([*_GET, (b"x-a", b"a\tb\xffc")], has_body=False)
    assert (b"x-a", b"a\tb\xffc") in out.fields
    assert request_fields([*_GET[:3], (b":path", b"/a~b!$&'()*+,;=:@%20")], has_body=False)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ([(b":method", b"CONNECT"), (b":authority", b"a.test:443")], 405),
        ([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a")], 400),
        ([*_GET, (b":protocol", b"websocket")], 400),
        ([*_GET, (b":path", b"/again")], 400),
        ([*_GET[:3], (b"accept", b"*/*"), _GET[3]], 400),
        ([*_GET, (b"Accept", b"*/*")], 400),
        ([*_GET, (b"bad name", b"x")], 400),
        ([*_GET, (b"connection", b"close")], 400),
        ([*_GET, (b"upgrade", b"websocket")], 400),
        ([*_GET, (b"te", b"gzip")], 400),
        ([*_GET, (b"x-pad", b" v")], 400),
        ([*_GET, (b"x-evil", b"a\r\nhost: b")], 400),
        ([*_GET, (b"x-nul", b"a\x00b")], 400),
        ([(b":method", b"GET x"), *_GET[1:]], 400),
        ([*_GET, *[(b"x-big", b"v" * 1000)] * 70], 431),
        # what the core's HTTP/1.1 parser refuses is refused as it was over HTTP/1.1
        ([(b":method", b"FOO"), *_GET[1:]], 400),
        ([(b":method", b"get"), *_GET[1:]], 400),
        ([*_GET[:3], (b":path", b"/a\x01")], 400),
        ([*_GET[:3], (b":path", b"/a\tb")], 400),
        ([*_GET[:3], (b":path", b"/\xc3\xa9")], 400),
        ([*_GET[:3], (b":path", b"/\x7f")], 400),
        ([*_GET, (b"x-ctl", b"a\x01b")], 400),
        ([*_GET, (b"x-del", b"a\x7fb")], 400),
        ([*_GET[:2], (b":authority", b"a\x01"), _GET[3]], 400),
    ],
)
def test_requests_that_cannot_be_forwarded(fields: Headers, status: int) -> None:
    with pytest.raises(H2RequestError) as err:
        request_fields(fields, has_body=False)
    assert err.value.status == status


def test_response_fields_lose_hop_by_hop_and_connection_named_fields() -> None:
    upstream: Headers = [
        (b"Content-Type", b"text/plain"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"X-Private", b"secret"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Content-Length", b"3"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"X-Padded", b"v \t"),
    ]
    assert response_headers(upstream) == [
        (b"content-type", b"text/plain"),
        (b"content-length", b"3"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-padded", b"v"),
    ]


def test_reset_budget_allows_the_limit_per_interval_then_refuses() -> None:
    budget = ResetBudget(limit=3, interval=10.0)
    assert [budget.hit(0.0), budget.hit(1.0), budget.hit(2.0)] == [True, True, True]
    assert not budget.hit(3.0)
    assert budget.hit(10.5)  # a new interval
    assert budget.hit(11.0) and budget.hit(12.0)
    assert not budget.hit(13.0)


def test_default_limits() -> None:
    limits = H2Limits()
    assert limits.max_concurrent_streams == 100
    assert limits.max_header_list_size == 65536
    assert limits.buffer_limit < limits.initial_window_size <= limits.connection_window
