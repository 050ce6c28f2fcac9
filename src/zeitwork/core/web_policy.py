"""The rules for CORS and security-header policy values: shared by the edge, which builds its
policies from them, and by the operator's API, which refuses a bad per-domain policy before
any edge receives it. Pure: strings in, normalized strings out or ``ValueError``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

ORIGIN_FORM = re.compile(r"^(https?)://([a-z0-9.*-]+)(:[0-9]{1,5})?$")
TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
FRAME_OPTIONS = ("DENY", "SAMEORIGIN")


def parse_origin(raw: str) -> tuple[str, str, str] | None:
    """A CORS origin: None for ``*``; else ``(scheme, host, port)`` (lower-case; the port with
    its colon, or ""), where a host ``*.example.com`` is a wildcard. ValueError when bad."""
    origin = raw.strip().lower().rstrip("/")
    if origin == "*":
        return None
    match = ORIGIN_FORM.match(origin)
    if match is None:
        raise ValueError(f"CORS: {raw!r} is not an origin like https://app.example.com")
    scheme, host, port = match.group(1), match.group(2), match.group(3) or ""
    if "*" in host and (not host.startswith("*.") or "*" in host[2:] or host.count(".") < 2):
        raise ValueError(f"CORS: wildcard {raw!r} must look like https://*.example.com")
    return scheme, host, port


class CorsFields(Protocol):
    """The fields of a CORS policy: the edge's ``CorsConfig``, the operator's ``CorsOverride``."""

    @property
    def origins(self) -> Sequence[str]: ...
    @property
    def methods(self) -> Sequence[str]: ...
    @property
    def headers(self) -> Sequence[str]: ...
    @property
    def expose_headers(self) -> Sequence[str]: ...
    @property
    def credentials(self) -> bool: ...
    @property
    def max_age(self) -> int: ...


def check_cors(policy: CorsFields) -> None:
    """Every rule of a CORS policy; ValueError naming the first one broken."""
    for raw in policy.origins:
        if parse_origin(raw) is None and policy.credentials:
            raise ValueError(
                "CORS: '*' cannot be combined with credentials "
                "(that would let any website read logged-in users' data)"
            )
    for method in policy.methods:
        if not TOKEN.match(method):
            raise ValueError(f"CORS: {method!r} is not an HTTP method")
    for name in (*policy.headers, *policy.expose_headers):
        if name != "*" and not TOKEN.match(name):
            raise ValueError(f"CORS: {name!r} is not a header name")
    if policy.max_age < 0:
        raise ValueError("CORS: max-age must not be negative")


def check_header_value(name: str, value: str) -> bytes:
    """A security header's value as bytes; ValueError when it could split the header."""
    if any(ch in value for ch in "\r\n\x00") or not value.isprintable():
        raise ValueError(f"security headers: {name} value has control characters")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"security headers: {name} value is not Latin-1 text") from exc


def check_frame_options(value: str) -> str:
    """``X-Frame-Options``: DENY or SAMEORIGIN (any case), upper-cased."""
    upper = value.upper()
    if upper not in FRAME_OPTIONS:
        raise ValueError(f"X-Frame-Options must be DENY or SAMEORIGIN, not {value!r}")
    return upper
