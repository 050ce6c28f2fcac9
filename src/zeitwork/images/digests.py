"""Content digests as OCI writes them: ``sha256:<64 lowercase hex>``."""

from __future__ import annotations

import re

from zeitwork.core.errors import InvalidInput

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
_DIGEST_RE = re.compile(DIGEST_PATTERN)
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")


def is_digest(value: object) -> bool:
    """Whether ``value`` is a ``sha256:<hex>`` digest (the only algorithm accepted)."""
    return isinstance(value, str) and _DIGEST_RE.match(value) is not None


def parse_digest(value: str) -> str:
    """Return the hex part of a ``sha256:<hex>`` digest, or raise ``InvalidInput``."""
    if not is_digest(value):
        raise InvalidInput(f"not a sha256 digest: {value[:80]!r} (expected sha256:<64 hex>)")
    return value[len("sha256:") :]


def is_hex(value: str) -> bool:
    return _HEX_RE.match(value) is not None
