"""The package's public surface is explicit and sorted (constants, classes, functions)."""

from __future__ import annotations

import zeitwork.images


def _kind(name: str) -> tuple[int, str]:
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_importable():
    names = zeitwork.images.__all__
    assert names == sorted(names, key=_kind)
    assert len(set(names)) == len(names)
    for name in names:
        assert getattr(zeitwork.images, name) is not None
