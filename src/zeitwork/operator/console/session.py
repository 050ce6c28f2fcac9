"""The console's session: an API token in a cookie, and the CSRF token bound to it.

Pure (no I/O). The cookie holds ``<nonce>.<base64url(token)>``: the token itself, so any
operator process against the same database accepts it (no server-side session store), and
a nonce fresh at every sign-in. The CSRF token of a session is an HMAC of its nonce keyed by
its API token: only someone who holds the cookie's contents can compute it, and signing in
again gives a new one. The cookie is HttpOnly and SameSite=Strict (Secure over HTTPS), so
other sites neither read it nor make the browser send it; state-changing POSTs must also
carry the CSRF token (compared in constant time) and, when the browser names one, an
``Origin`` equal to the console's own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

COOKIE_NAME = "zw_console"
CSRF_FIELD = "csrf"
MAX_COOKIE_CHARS = 2048
MAX_TOKEN_CHARS = 1024
_NONCE_BYTES = 16
_CSRF_CONTEXT = b"zeitwork-console-csrf:"
_COOKIE_METHODS = frozenset({"GET"})


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    token: str

    def __repr__(self) -> str:  # never show the token
        return f"Session(nonce={self.nonce!r}, token=<hidden>)"


def new_session(token: str) -> Session:
    """A session for ``token`` (already validated by the caller) with a fresh nonce."""
    token = token.strip()
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise ValueError("a token is 1 to 1024 characters")
    return Session(nonce=secrets.token_urlsafe(_NONCE_BYTES), token=token)


def encode(session: Session) -> str:
    packed = base64.urlsafe_b64encode(session.token.encode()).decode().rstrip("=")
    return f"{session.nonce}.{packed}"


def decode(value: str | None) -> Session | None:
    """The session in a cookie value, or None for a missing or malformed one."""
    if not value or len(value) > MAX_COOKIE_CHARS:
        return None
    nonce, dot, packed = value.partition(".")
    if not dot or not nonce or not packed or not _is_urlsafe(nonce) or not _is_urlsafe(packed):
        return None
    try:
        token = base64.urlsafe_b64decode(packed + "=" * (-len(packed) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not token or len(token) > MAX_TOKEN_CHARS or token != token.strip():
        return None
    return Session(nonce=nonce, token=token)


def csrf_token(session: Session) -> str:
    mac = hmac.new(session.token.encode(), _CSRF_CONTEXT + session.nonce.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def csrf_valid(session: Session, submitted: str | None) -> bool:
    """Whether ``submitted`` is this session's CSRF token (constant-time comparison)."""
    if not submitted:
        return False
    return hmac.compare_digest(csrf_token(session).encode(), submitted.encode())


def origin_allowed(origin: str | None, *, scheme: str, host: str | None) -> bool:
    """A POST's ``Origin`` must be the console's own; browsers that send none pass (the
    CSRF token still guards them). ``null`` (a sandboxed or privacy-stripped origin) fails."""
    if origin is None:
        return True
    if not host:
        return False
    return origin.rstrip("/").lower() == f"{scheme}://{host}".lower()


def cookie_options(*, secure: bool) -> dict[str, Any]:
    """Keyword arguments of ``Response.set_cookie`` for the session cookie (a browser
    session cookie: no Max-Age, gone when the browser closes)."""
    return {
        "key": COOKIE_NAME,
        "path": "/",
        "httponly": True,
        "samesite": "strict",
        "secure": secure,
    }


def console_authorization(method: str, cookies: Mapping[str, str]) -> str | None:
    """``Bearer <token>`` of a console session cookie, for GETs only (the console's pages
    and its event and log streams); None otherwise. API clients send the header."""
    if method not in _COOKIE_METHODS:
        return None
    session = decode(cookies.get(COOKIE_NAME))
    return None if session is None else f"Bearer {session.token}"


def parse_form(body: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; a name given twice keeps the first.
    Raises ValueError for a body that is not UTF-8 or not a form."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise ValueError("the form is not UTF-8") from exc
    form: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text)):
        form.setdefault(name, value)
    return form


def _is_urlsafe(text: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in text)
