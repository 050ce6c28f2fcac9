"""The one rule every request's strings obey: no NUL character and no lone surrogate.

PostgreSQL cannot store either in ``text`` or ``jsonb`` (psycopg refuses NUL before sending,
UTF-8 cannot encode a lone surrogate), and no name, reason or address needs them. The
request middleware applies this to the path, the query string and every string (keys too)
of a JSON body, before any route or model sees them, so a new route or wire model is
covered without doing anything. Pure functions; the middleware only moves the bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

# JSON's \u escapes and non-ASCII bytes are the only ways a lone surrogate or a NUL can
# reach a parsed JSON string (a raw NUL byte inside a string is malformed JSON).
_UNSAFE = re.compile("[\x00\ud800-\udfff]")
_ESCAPE = b"\\u"


@dataclass(frozen=True, slots=True)
class UnsafeText:
    """One refused string: where it is (``field``, dotted like the validation errors) and why."""

    field: str
    message: str


def reason(text: str) -> str | None:
    """Why ``text`` is refused, or None when it is fine."""
    found = _UNSAFE.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "must not contain NUL characters (U+0000)"
    return f"must not contain a lone surrogate (U+{ord(char):04X})"


def printable(text: str) -> str:
    """``text`` with its refused characters written as ``\\uXXXX`` (safe to echo back)."""
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def in_json(value: object, *, limit: int = 20) -> list[UnsafeText]:
    """Every refused string in a parsed JSON value (keys and values), at most ``limit``."""
    found: list[UnsafeText] = []
    stack: list[tuple[str, object]] = [("", value)]
    while stack and len(found) < limit:
        where, item = stack.pop()
        if isinstance(item, str):
            why = reason(item)
            if why is not None:
                found.append(UnsafeText(field=where or "body", message=why))
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                path = f"{where}.{printable(key)}" if where else printable(key)
                why = reason(key)
                if why is not None:
                    found.append(UnsafeText(field=path, message="the key " + why))
                stack.append((path, child))
        elif isinstance(item, list):
            for index in range(len(item) - 1, -1, -1):
                stack.append((f"{where}.{index}" if where else str(index), item[index]))
    return found[:limit]


def in_json_body(body: bytes) -> list[UnsafeText]:
    """Refused strings in a JSON request body; [] when there are none or the body is not
    JSON (the route then reports malformed JSON itself)."""
    if _ESCAPE not in body and body.isascii():
        return []  # the common case: nothing to parse twice
    try:
        value = json.loads(body)
    except ValueError:  # JSONDecodeError and undecodable bytes alike
        return []
    return in_json(value)


def in_query(query_string: bytes) -> list[UnsafeText]:
    """Refused names or values in a raw query string (decoded the way Starlette does)."""
    if not query_string:
        return []
    found: list[UnsafeText] = []
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        why = reason(name)
        if why is not None:
            found.append(UnsafeText(field=printable(name), message="the name " + why))
        why = reason(value)
        if why is not None:
            found.append(UnsafeText(field=printable(name), message=why))
    return found


def in_path(path: str) -> list[UnsafeText]:
    """The decoded request path (path parameters included)."""
    why = reason(path)
    return [] if why is None else [UnsafeText(field="path", message=why)]
