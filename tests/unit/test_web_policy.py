from __future__ import annotations

import pytest

from zeitwork.core.web_policy import (
    check_cors,
    check_frame_options,
    check_header_value,
    parse_origin,
)


def test_origins_are_normalized_or_refused() -> None:
    assert parse_origin(" HTTPS://App.Example.com/ ") == ("https", "app.example.com", "")
    assert parse_origin("http://localhost:3000") == ("http", "localhost", ":3000")
    assert parse_origin("https://*.example.com") == ("https", "*.example.com", "")
    assert parse_origin("*") is None
    for bad in ("example.com", "ftp://x.test", "https://*.com", "https://a.*.example.com"):
        with pytest.raises(ValueError, match="CORS"):
            parse_origin(bad)


def test_cors_rules() -> None:
    check_cors(origins=["*"], methods=["GET"], headers=["*"], credentials=False, max_age=0)
    with pytest.raises(ValueError, match="credentials"):
        check_cors(origins=["*"], methods=[], headers=[], credentials=True, max_age=0)
    with pytest.raises(ValueError, match="HTTP method"):
        check_cors(origins=[], methods=["GE T"], headers=[], credentials=False, max_age=0)
    with pytest.raises(ValueError, match="header name"):
        check_cors(origins=[], methods=[], headers=["X:Y"], credentials=False, max_age=0)
    with pytest.raises(ValueError, match="max-age"):
        check_cors(origins=[], methods=[], headers=[], credentials=False, max_age=-1)


def test_security_header_values() -> None:
    assert check_frame_options("sameorigin") == "SAMEORIGIN"
    with pytest.raises(ValueError, match="X-Frame-Options"):
        check_frame_options("ALLOW-FROM https://x")
    assert check_header_value("csp", "default-src 'self'") == b"default-src 'self'"
    for bad in ("a\r\nSet-Cookie: x", "a\x00b", "caf\u00e9\u2603"):
        with pytest.raises(ValueError, match="security headers"):
            check_header_value("csp", bad)
