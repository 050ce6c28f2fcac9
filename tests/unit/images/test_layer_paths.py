"""Pure parts of the layer store: entry names made relative or refused, overlay options."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.images.overlay import lowerdir_option
from zeitwork.images.unpack import _clean


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [
        ("./etc/passwd", "etc/passwd"),
        ("etc//passwd", "etc/passwd"),
        ("etc/./passwd", "etc/passwd"),
        ("usr/lib/", "usr/lib"),
        ("./", ""),
        (".", ""),
        ("/etc/passwd", None),
        ("../x", None),
        ("a/../../x", None),
        ("a/b/..", None),
        ("a\x00b", None),
        (".wh...", ".wh..."),  # a name; the whiteout's own check refuses what it hides
    ],
)
def test_entry_names(name: str, cleaned: str | None) -> None:
    assert _clean(name) == cleaned


def test_lowerdir_option_top_first_and_refuses_separators() -> None:
    assert lowerdir_option([Path("/l/top"), Path("/l/base")]) == "lowerdir=/l/top:/l/base"
    for bad in ("/l/a:b", "/l/a,b", "/l/a b"):
        with pytest.raises(OSError, match="must not contain"):
            lowerdir_option([Path(bad)])
    with pytest.raises(ValueError, match="at least one layer"):
        lowerdir_option([])
