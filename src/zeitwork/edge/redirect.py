"""HTTP to HTTPS: a 308 to the same URL on HTTPS for hosts that have a certificate.

The ACME HTTP-01 path ``/.well-known/acme-challenge/`` is never redirected: the CA fetches
it over plain HTTP, before the certificate exists (and again on renewal).
"""

from __future__ import annotations

import re
from collections.abc import Callable

ACME_CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
_HOST = re.compile(rb"^([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def host_name(host_header: bytes | None) -> str | None:
    """The lower-case host name of a ``Host`` header without its port, or None if invalid."""
    if not host_header:
        return None
    host = host_header.strip().lower()
    if host.startswith(b"["):  # IPv6 literal: never has a certificate of ours
        return None
    name, _, port = host.partition(b":")
    if port and not port.isdigit():
        return None
    if name.endswith(b"."):
        name = name[:-1]
    if len(name) > 253 or not _HOST.match(name):
        return None
    return name.decode("ascii")


def https_location(
    host_header: bytes | None,
    target: bytes,
    *,
    https_port: int,
    has_certificate: Callable[[str], bool],
) -> bytes | None:
    """The ``Location`` for a redirect to HTTPS, or None when the request is served as is."""
    if target.startswith(ACME_CHALLENGE_PREFIX):
        return None
    name = host_name(host_header)
    if name is None or not has_certificate(name):
        return None
    if not target.startswith(b"/"):
        target = b"/"  # absolute-form or '*': send the client to the root
    authority = name if https_port == 443 else f"{name}:{https_port}"
    return b"https://" + authority.encode("ascii") + target
