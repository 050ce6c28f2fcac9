"""The console's session and CSRF rules (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeitwork.operator.console.session import (
    COOKIE_NAME,
    Session,
    console_authorization,
    cookie_options,
    csrf_token,
    csrf_valid,
    decode,
    encode,
    new_session,
    origin_allowed,
    parse_form,
)

TOKEN = "zw_" + "A1b2-_" * 7 + "x"


def test_a_cookie_round_trips_and_hides_the_token() -> None:
    session = new_session(TOKEN)
    value = encode(session)
    assert decode(value) == session
    assert TOKEN not in value
    assert TOKEN not in repr(session)
    assert set(value) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@given(st.text(min_size=1, max_size=200).filter(lambda t: t == t.strip() and t.strip()))
def test_any_token_round_trips(token: str) -> None:
    session = new_session(token)
    assert decode(encode(session)) == session


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        ".",
        "abc",
        "abc.",
        ".abc",
        "a b.c",
        "abc.!!!",
        "abc.def.ghi",
        "x" * 3000,
        "abc.//8",
        "abc.IHg",
    ],  # bad base64 chars, bad UTF-8, a token with a leading space
)
def test_malformed_cookies_are_no_session(value: str | None) -> None:
    assert decode(value) is None


@given(st.text(max_size=300))
def test_decode_never_raises(value: str) -> None:
    decode(value)


def test_new_session_refuses_empty_or_huge_tokens() -> None:
    for bad in ("", "   ", "x" * 1025):
        with pytest.raises(ValueError):
            new_session(bad)
    assert new_session(" zw_x ").token == "zw_x"


def test_each_sign_in_is_a_new_session_with_its_own_csrf_token() -> None:
    first, second = new_session(TOKEN), new_session(TOKEN)
    assert first.nonce != second.nonce
    assert csrf_token(first) != csrf_token(second)
    assert csrf_token(first) == csrf_token(Session(nonce=first.nonce, token=TOKEN))


def test_the_csrf_token_depends_on_the_api_token() -> None:
    session = new_session(TOKEN)
    other = Session(nonce=session.nonce, token=TOKEN + "y")
    assert csrf_token(session) != csrf_token(other)
    assert not csrf_valid(other, csrf_token(session))


def test_csrf_check() -> None:
    session = new_session(TOKEN)
    good = csrf_token(session)
    assert csrf_valid(session, good)
    for bad in (None, "", good[:-1], good + "x", good.upper(), "é" * 10):
        assert not csrf_valid(session, bad)


@pytest.mark.parametrize(
    ("origin", "scheme", "host", "allowed"),
    [
        (None, "http", "op:8080", True),
        ("http://op:8080", "http", "op:8080", True),
        ("HTTP://OP:8080/", "http", "op:8080", True),
        ("https://op:8080", "http", "op:8080", False),
        ("http://op:8081", "http", "op:8080", False),
        ("http://evil.example", "http", "op:8080", False),
        ("null", "http", "op:8080", False),
        ("http://op:8080", "http", None, False),
    ],
)
def test_origin(origin: str | None, scheme: str, host: str | None, allowed: bool) -> None:
    assert origin_allowed(origin, scheme=scheme, host=host) is allowed


def test_cookie_options() -> None:
    plain = cookie_options(secure=False)
    assert plain == {
        "key": COOKIE_NAME,
        "path": "/",
        "httponly": True,
        "samesite": "strict",
        "secure": False,
    }
    assert cookie_options(secure=True)["secure"] is True


def test_the_cookie_authenticates_gets_only() -> None:
    cookies = {COOKIE_NAME: encode(new_session(TOKEN))}
    assert console_authorization("GET", cookies) == f"Bearer {TOKEN}"
    for method in ("POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"):
        assert console_authorization(method, cookies) is None
    assert console_authorization("GET", {}) is None
    assert console_authorization("GET", {COOKIE_NAME: "junk"}) is None


def test_parse_form() -> None:
    assert parse_form(b"") == {}
    assert parse_form(b"token=zw_a%2Bb&csrf=x&csrf=y&empty=") == {
        "token": "zw_a+b",
        "csrf": "x",
        "empty": "",
    }
    assert parse_form(b"image=caf%C3%A9") == {"image": "café"}
    for bad in (b"\xff\xfe", b"novalue&&&"):
        with pytest.raises(ValueError):
            parse_form(bad)
