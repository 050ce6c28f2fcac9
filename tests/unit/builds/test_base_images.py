"""Base image names, user overrides and the host's apt sources (no I/O beyond tmp files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.builds.base_images import (
    AptSource,
    apt_sources,
    default_reference,
    parse_overrides,
    reference,
)
from zeitwork.core.errors import InvalidInput


def test_references_and_overrides() -> None:
    assert default_reference("python") == "localhost/zeitwork/python:bookworm"
    overrides = parse_overrides(" python=registry.example/py:3.12 ,\nnode=reg.example/node:20 ,")
    assert overrides == {"python": "registry.example/py:3.12", "node": "reg.example/node:20"}
    assert reference("python", overrides) == "registry.example/py:3.12"
    assert reference("static", overrides) == "localhost/zeitwork/static:bookworm"
    assert parse_overrides("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("python", "is not STACK=IMAGE"),
        ("python=", "is not STACK=IMAGE"),
        ("python=a b", "is not STACK=IMAGE"),
        ("ruby=reg/ruby:3", "unknown stack 'ruby'"),
    ],
)
def test_bad_overrides_are_clear(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_overrides(text)


def test_apt_sources_read_both_formats_for_the_suite(tmp_path: Path) -> None:
    listing = tmp_path / "sources.list"
    listing.write_text(
        "# a comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb http://mirror.example/debian bullseye main\n"
    )
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb deb-src\n"
        "URIs: http://mirror.example/debian http://other.example/debian\n"
        "Suites: bookworm-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "Signed-By:\n"
        " -----BEGIN PGP PUBLIC KEY BLOCK-----\n"
        " .\n"
        "\n"
        "Types: deb\n"
        "Enabled: no\n"
        "URIs: http://disabled.example/\n"
        "Suites: bookworm\n"
        "Components: main\n"
    )
    (parts / "third.list.disabled").write_text("deb http://x.example/ bookworm main\n")
    found = apt_sources([listing, parts])
    assert found == [
        AptSource("http://mirror.example/debian", "bookworm", ("main", "contrib"), "/k.gpg"),
        AptSource(
            "http://mirror.example/debian",
            "bookworm-updates",
            ("main",),
            "/usr/share/keyrings/debian-archive-keyring.gpg",
        ),
        AptSource(
            "http://other.example/debian",
            "bookworm-updates",
            ("main",),
            "/usr/share/keyrings/debian-archive-keyring.gpg",
        ),
        AptSource("http://security.example/debian-security", "bookworm-security", ("main",)),
    ]
    assert found[0].line() == (
        "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib"
    )
    assert found[3].line() == "deb http://security.example/debian-security bookworm-security main"
