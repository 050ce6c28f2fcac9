"""A tiny HTML builder that escapes every string it is given (pure).

``el("a", "Tom & Jerry", href="/x?a=1&b=2")`` is ``<a href="/x?a=1&amp;b=2">Tom &amp;
Jerry</a>``. Text and attribute values are always escaped; only ``Html`` (what ``el``
returns) is inserted as it is. Attribute names: a trailing ``_`` is dropped (``class_``)
and ``_`` becomes ``-`` (``aria_live``); ``True`` writes a bare attribute, ``False`` and
``None`` leave it out.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

VOID = frozenset({"br", "hr", "img", "input", "link", "meta"})


class Html(str):
    """Markup that is already safe (built by ``el`` or ``join``)."""

    __slots__ = ()


def text(value: object) -> Html:
    return value if isinstance(value, Html) else Html(escape(str(value), quote=True))


def join(children: Iterable[object]) -> Html:
    return Html("".join(_render(child) for child in children))


def el(tag: str, *children: object, **attrs: object) -> Html:
    parts = [tag]
    for name, value in attrs.items():
        if value is None or value is False:
            continue
        attr = name.rstrip("_").replace("_", "-")
        parts.append(attr if value is True else f'{attr}="{escape(str(value), quote=True)}"')
    opening = "<" + " ".join(parts) + ">"
    if tag in VOID:
        if children:
            raise ValueError(f"<{tag}> has no content")
        return Html(opening)
    return Html(f"{opening}{join(children)}</{tag}>")


def _render(child: object) -> str:
    if child is None or child is False:
        return ""
    if isinstance(child, str | int | float):
        return text(child)
    if isinstance(child, Iterable):
        return join(child)
    raise TypeError(f"cannot render {type(child).__name__}")
