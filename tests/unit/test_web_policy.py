from __future__ import annotations

import pytest

from zeitwork.core.web_policy import (
    check_cors,
    check_frame_options,
    check_header_value,
    parse_origin,
)
from zeitwork.edge.cors import CorsConfig


def test_origins_are_normalized_or_refused() -> None:
    assert parse_origin(" HTTPS://App.Example.com/ ") == ("https", "app.example.com", "")
    assert parse_origin("http://localhost:3000") == ("http", "localhost", ":3000")
    assert parse_origin("https://*.example.com") == ("https", "*.example.com", "")
    assert parse_origin("*") is None
    for bad in ("example.com", "ftp://x.test", "https://*.com", "https://a.*.example.com"):
        with pytest.raises(ValueError, match="CORS"):
            parse_origin(bad)


def test_cors_rules() -> None:
    check_cors(CorsConfig(origins=("*",), headers=("*",), max_age=0))
    bad = [
        (CorsConfig(origins=("*",), credentials=True), "credentials"),
        (CorsConfig(methods=("GE T",)), "HTTP method"),
        (CorsConfig(expose_headers=("X:Y",)), "header name"),
        (CorsConfig(max_age=-1), "max-age"),
    ]
    for config, message in bad:
        with pytest.raises(ValueError, match=message):
            check_cors(config)


def test_security_header_values() -> None:
    assert check_frame_options("sameorigin") == "SAMEORIGIN"
    with pytest.raises(ValueError, match="X-Frame-Options"):
        check_frame_options("ALLOW-FROM https://x")
    assert check_header_value("csp", "default-src 'self'") == b"default-src 'self'"
    for bad in ("a\r\nSet-Cookie: x", "a\x00b", "caf\u00e9\u2603"):
        with pytest.raises(ValueError, match="security headers"):
            check_header_value("csp", bad)
