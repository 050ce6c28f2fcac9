"""Values read from the console's forms (pure)."""

from __future__ import annotations


def whole_number(text: str, *, max_digits: int) -> int | None:
    """``text`` as a non-negative whole number of ASCII digits (at most ``max_digits``), or
    None: ``str.isdigit`` alone would take ``²`` or ``٣``, which ``int`` refuses or reads."""
    text = text.strip()
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)
