"""Numbers from the console's forms (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zeitwork.operator.console.forms import whole_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        (" 12 ", 12),
        ("0", 0),
        ("0007", 7),
        ("9999", 9999),
        ("10000", None),
        ("", None),
        ("-1", None),
        ("1.5", None),
        ("²", None),
        ("٣", None),
        ("1e3", None),
        ("lots", None),
    ],
)
def test_whole_number(text: str, expected: int | None) -> None:
    assert whole_number(text, max_digits=4) == expected


@given(st.text(max_size=12))
def test_never_raises(text: str) -> None:
    value = whole_number(text, max_digits=6)
    assert value is None or 0 <= value < 10**6
