"""Pending ACME challenge answers, shared by the plain-HTTP listener and TLS terminator."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Protocol

from zeitwork.core.files import atomic_write_text

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # base64url, as RFC 8555 requires
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
# how often the other workers look for TLS-ALPN-01 certificates, and how long the publishing
# worker waits before telling the CA to validate (so that every worker serves it by then)
SYNC_INTERVAL = 0.25
PROPAGATION = 3 * SYNC_INTERVAL


class ChallengeSlot(Protocol):
    """Where TLS-ALPN-01 certificates are served (``edge.tls.TlsTerminator``, which reads its
    own certificates through this package: it depends on the package, not the other way)."""

    def set_challenge(self, domain: str, cert_pem: str, key_pem: str) -> None: ...

    def clear_challenge(self, domain: str) -> None: ...


class Challenges:
    """The ``ChallengeBoard`` of the edge: HTTP-01 tokens and TLS-ALPN-01 certificates.

    With several workers, answers are also written to ``directory`` so that whichever worker
    the CA's validation reaches can answer it: HTTP-01 tokens are read from there on demand,
    TLS-ALPN-01 certificates are picked up by the other workers' ``sync_tls_alpn`` (every
    ``SYNC_INTERVAL`` s), and the publishing worker waits ``PROPAGATION`` s before the CA is
    told to validate."""

    def __init__(
        self, *, tls: ChallengeSlot, directory: Path | None = None, propagation: float = PROPAGATION
    ) -> None:
        self._http: dict[str, str] = {}
        self._tls = tls
        self._dir = directory
        self._propagation = propagation
        self._synced: dict[str, int] = {}  # domain -> mtime of the file it was loaded from
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            (directory / "tls-alpn").mkdir(exist_ok=True, mode=0o700)

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
            # read by whichever worker the CA reaches: whole or not at all; lost in a power
            # cut, the validation fails and is retried
            atomic_write_text(self._dir / token, key_authorization, durable=False)

    def withdraw_http(self, token: str) -> None:
        self._http.pop(token, None)
        if self._dir is not None and _TOKEN.match(token):
            (self._dir / token).unlink(missing_ok=True)

    def publish_tls_alpn(self, domain: str, cert_pem: str, key_pem: str) -> None:
        self._tls.set_challenge(domain, cert_pem, key_pem)
        path = self._alpn_path(domain)
        if path is None:
            return
        body = json.dumps({"cert": cert_pem, "key": key_pem})
        atomic_write_text(path, body, mode=0o600, durable=False)  # as the HTTP-01 token
        time.sleep(self._propagation)  # runs in the issuing thread, not on the event loop

    def withdraw_tls_alpn(self, domain: str) -> None:
        self._tls.clear_challenge(domain)
        path = self._alpn_path(domain)
        if path is not None:
            path.unlink(missing_ok=True)

    def _alpn_path(self, domain: str) -> Path | None:
        domain = domain.lower()
        if self._dir is None or not _DOMAIN.match(domain):
            return None
        return self._dir / "tls-alpn" / f"{domain}.json"

    def sync_tls_alpn(self) -> None:
        """The other workers: serve the TLS-ALPN-01 certificates published in the directory,
        and stop serving the withdrawn ones."""
        if self._dir is None:
            return
        present: dict[str, int] = {}
        for path in (self._dir / "tls-alpn").glob("*.json"):
            try:
                present[path.stem] = path.stat().st_mtime_ns
            except OSError:
                continue
        for domain, mtime in present.items():
            if self._synced.get(domain) == mtime:
                continue
            try:
                data = json.loads((self._dir / "tls-alpn" / f"{domain}.json").read_text())
                self._tls.set_challenge(domain, str(data["cert"]), str(data["key"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # half-written or gone: the next pass sees it again
            self._synced[domain] = mtime
        for domain in [d for d in self._synced if d not in present]:
            self._tls.clear_challenge(domain)
            del self._synced[domain]
