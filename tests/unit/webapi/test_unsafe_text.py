"""The shared string rule: NUL characters and lone surrogates are found wherever they are."""

from __future__ import annotations

import json

import pytest

from zeitwork.webapi import unsafe_text
from zeitwork.webapi.unsafe_text import UnsafeText


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("plain", None),
        ("ünïcödé ✓ 😀", None),
        ("a\x00b", "must not contain NUL characters (U+0000)"),
        ("\ud800", "must not contain a lone surrogate (U+D800)"),
        ("x\udfffy", "must not contain a lone surrogate (U+DFFF)"),
    ],
)
def test_reason(text: str, expected: str | None) -> None:
    assert unsafe_text.reason(text) == expected


def test_printable_escapes_only_what_is_refused() -> None:
    assert unsafe_text.printable("a\x00b\ud83dé") == "a\\u0000b\\ud83dé"


def test_in_json_walks_keys_values_lists_in_order() -> None:
    value = {
        "name": "ok",
        "instances": [{"reason": "fine"}, {"reason": "bad\x00"}],
        "env": {"K\ud800": "v", "L": ["x", "\udc00"]},
        "n": 5,
        "none": None,
    }
    assert unsafe_text.in_json(value) == [
        UnsafeText("instances.1.reason", "must not contain NUL characters (U+0000)"),
        UnsafeText("env.K\\ud800", "the key must not contain a lone surrogate (U+D800)"),
        UnsafeText("env.L.1", "must not contain a lone surrogate (U+DC00)"),
    ]


def test_in_json_top_level_string_and_limit() -> None:
    assert unsafe_text.in_json("\x00") == [
        UnsafeText("body", "must not contain NUL characters (U+0000)")
    ]
    assert len(unsafe_text.in_json(["\x00"] * 100)) == 20


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "a\\u0000b"}',
        b'{"name": "\\ud800"}',
        b'{"name": "\\udc00\\ud800"}',  # a low before a high: both lone
        '{"name": "\ud800"}'.encode("utf-8", "surrogatepass"),  # CESU bytes json accepts
        b'["\\u0000"]',
    ],
)
def test_in_json_body_finds_escapes_and_raw_surrogate_bytes(body: bytes) -> None:
    assert json.loads(body)  # FastAPI would parse these
    assert unsafe_text.in_json_body(body) != []


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "plain"}',
        b'{"name": "\\ud83d\\ude00"}',  # a surrogate pair is one real character
        b'{"name": "\\\\u0000"}',  # an escaped backslash, then the text u0000
        '{"name": "é"}'.encode(),
        b"{not json \\u0000",
        b"\xff\xfe",
        b"",
    ],
)
def test_in_json_body_passes_what_is_fine_or_not_json(body: bytes) -> None:
    assert unsafe_text.in_json_body(body) == []


def test_in_query() -> None:
    assert unsafe_text.in_query(b"") == []
    assert unsafe_text.in_query(b"limit=5&name=%C3%A9") == []
    assert unsafe_text.in_query(b"%ED%A0%80=1") == []  # invalid UTF-8 decodes to U+FFFD
    assert unsafe_text.in_query(b"name=a%00b&x%00=1") == [
        UnsafeText("name", "must not contain NUL characters (U+0000)"),
        UnsafeText("x\\u0000", "the name must not contain NUL characters (U+0000)"),
    ]


def test_in_path() -> None:
    assert unsafe_text.in_path("/api/v1/nodes/abc") == []
    assert unsafe_text.in_path("/api/v1/nodes/a\x00") == [
        UnsafeText("path", "must not contain NUL characters (U+0000)")
    ]
