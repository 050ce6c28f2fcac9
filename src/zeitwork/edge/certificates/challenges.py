"""Pending ACME challenge answers, shared by the plain-HTTP listener and TLS terminator."""

from __future__ import annotations

import re
from pathlib import Path

from zeitwork.edge.tls import TlsTerminator

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # base64url, as RFC 8555 requires


class Challenges:
    """The ``ChallengeBoard`` of the edge: HTTP-01 tokens and TLS-ALPN-01 certificates.

    With several workers, HTTP-01 answers are also written to ``directory`` so that whichever
    worker the CA's request reaches can answer it."""

    def __init__(self, *, tls: TlsTerminator, directory: Path | None = None) -> None:
        self._http: dict[str, str] = {}
        self._tls = tls
        self._dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def answer(self, token: str) -> str | None:
        known = self._http.get(token)
        if known is not None or self._dir is None or not _TOKEN.match(token):
            return known
        try:
            return (self._dir / token).read_text()
        except OSError:
            return None

    def publish_http(self, token: str, key_authorization: str) -> None:
        self._http[token] = key_authorization
        if self._dir is not None and _TOKEN.match(token):
            (self._dir / token).write_text(key_authorization)

    def withdraw_http(self, token: str) -> None:
        self._http.pop(token, None)
        if self._dir is not None and _TOKEN.match(token):
            (self._dir / token).unlink(missing_ok=True)

    def publish_tls_alpn(self, domain: str, cert_pem: str, key_pem: str) -> None:
        self._tls.set_challenge(domain, cert_pem, key_pem)

    def withdraw_tls_alpn(self, domain: str) -> None:
        self._tls.clear_challenge(domain)
