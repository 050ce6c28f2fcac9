"""The registry client's pure parts: challenges, token scopes, loopback registries."""

from __future__ import annotations

import pytest

from zeitwork.clients.registry import (
    Challenge,
    RegistryCredentials,
    is_loopback_registry,
    parse_challenge,
    scope_for,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.example.com/token",service="registry.example.com",'
            'scope="repository:team/app:pull"',
            Challenge(
                "bearer",
                {
                    "realm": "https://auth.example.com/token",
                    "service": "registry.example.com",
                    "scope": "repository:team/app:pull",
                },
            ),
        ),
        ('Basic realm="Registry Realm"', Challenge("basic", {"realm": "Registry Realm"})),
        ("Basic", Challenge("basic", {})),
        (
            'BEARER Realm="r", error="invalid_token"',
            Challenge("bearer", {"realm": "r", "error": "invalid_token"}),
        ),
        ("Bearer realm=bare,service=s", Challenge("bearer", {"realm": "bare", "service": "s"})),
        ('Bearer realm="a \\"quoted\\" one"', Challenge("bearer", {"realm": 'a "quoted" one'})),
        (
            'Bearer scope="repository:a:pull,push",realm="r"',
            Challenge("bearer", {"scope": "repository:a:pull,push", "realm": "r"}),
        ),
        ("", None),
        ("   ", None),
        ('Bearer realm="unterminated', None),
        ("Bearer =x", None),
        ("B3arer realm=x", None),
    ],
)
def test_parse_challenge(header: str, expected: Challenge | None) -> None:
    assert parse_challenge(header) == expected


def test_scope() -> None:
    assert scope_for("team/app") == "repository:team/app:pull"
    assert scope_for("team/app", push=True) == "repository:team/app:pull,push"


def test_credentials_hide_the_secret() -> None:
    creds = RegistryCredentials("deployer", "hunter2")
    assert "hunter2" not in repr(creds) and "hunter2" not in str(creds)


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("a.localhost:1", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("[::1]", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
        ("localhost.example.com", False),
        ("[2001:db8::1]:5000", False),
    ],
)
def test_loopback(registry: str, loopback: bool) -> None:
    assert is_loopback_registry(registry) is loopback
