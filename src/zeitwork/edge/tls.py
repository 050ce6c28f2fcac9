"""TLS termination: one server context whose SNI callback picks a per-host context.

- TLS 1.2 and 1.3 only; TLS 1.2 restricted to ECDHE with AES-GCM or ChaCha20-Poly1305.
- ALPN ``http/1.1``.
- ``install`` builds a fresh context for a host and swaps it into the table: connections
  already open keep the context they shook hands with, new handshakes get the new one, so
  a certificate change needs no restart and drops nothing.
- TLS-ALPN-01 (RFC 8737): while a challenge for a host is pending, handshakes for that host
  that name the host get the challenge context (ALPN ``acme-tls/1`` only).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from datetime import datetime
from pathlib import Path

from zeitwork.edge.certificates.x509 import CertificateError, CertInfo, inspect

ALPN_HTTP1 = "http/1.1"
ALPN_ACME = "acme-tls/1"
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"


def _base_context(alpn: list[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(alpn)
    return ctx


def _load(ctx: ssl.SSLContext, chain_pem: str, key_pem: str) -> None:
    # ssl can only read files: write both to a private temporary directory and remove them.
    with tempfile.TemporaryDirectory(prefix="zeitwork-tls-") as tmp:
        cert_path, key_path = Path(tmp) / "chain.pem", Path(tmp) / "key.pem"
        for path, text in ((cert_path, chain_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path))
        except ssl.SSLError as exc:
            raise CertificateError(f"OpenSSL refused the certificate: {exc}") from exc


def host_context(chain_pem: str, key_pem: str, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = _base_context(alpn or [ALPN_HTTP1])
    _load(ctx, chain_pem, key_pem)
    return ctx


class TlsTerminator:
    """The certificate table and the server ``SSLContext`` that consults it."""

    def __init__(self) -> None:
        self._hosts: dict[str, ssl.SSLContext] = {}
        self._wildcards: dict[str, ssl.SSLContext] = {}
        self._challenges: dict[str, ssl.SSLContext] = {}
        self._default: ssl.SSLContext | None = None
        self._default_name: str | None = None
        self._expiry: dict[str, datetime] = {}
        self.server_context = _base_context([ALPN_HTTP1])
        self.server_context.sni_callback = self._pick

    # -- table ------------------------------------------------------------------------

    def install(
        self, domain: str, chain_pem: str, key_pem: str, *, default: bool = False
    ) -> CertInfo:
        """Serve ``chain_pem`` for ``domain`` (``*.x`` for a wildcard) from now on."""
        info = inspect(chain_pem, key_pem)
        ctx = host_context(chain_pem, key_pem)
        domain = domain.lower().rstrip(".")
        if domain.startswith("*."):
            self._wildcards[domain[2:]] = ctx
        else:
            self._hosts[domain] = ctx
        self._expiry[domain] = info.not_after
        if default or self._default is None or domain == self._default_name:
            self._default = ctx
            self._default_name = domain
            # The base context itself also needs a certificate: some clients send no SNI.
            _load(self.server_context, chain_pem, key_pem)
        return info

    def set_default(self, chain_pem: str, key_pem: str) -> CertInfo:
        """The certificate for handshakes without SNI or for a host with none of its own."""
        info = inspect(chain_pem, key_pem)
        ctx = host_context(chain_pem, key_pem)
        _load(self.server_context, chain_pem, key_pem)
        self._default = ctx
        self._default_name = None
        return info

    def remove(self, domain: str) -> None:
        domain = domain.lower()
        self._hosts.pop(domain, None)
        if domain.startswith("*."):
            self._wildcards.pop(domain[2:], None)
        self._expiry.pop(domain, None)

    def has_certificate(self, host: str) -> bool:
        if host in self._hosts:
            return True
        _, _, parent = host.partition(".")
        return bool(parent) and parent in self._wildcards

    def expiries(self) -> dict[str, datetime]:
        return dict(self._expiry)

    def domains(self) -> list[str]:
        return sorted(self._expiry)

    def set_challenge(self, domain: str, cert_pem: str, key_pem: str) -> None:
        self._challenges[domain.lower()] = host_context(cert_pem, key_pem, alpn=[ALPN_ACME])

    def clear_challenge(self, domain: str) -> None:
        self._challenges.pop(domain.lower(), None)

    # -- handshake --------------------------------------------------------------------

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name is None:
            return self._default
        name = server_name.lower().rstrip(".")
        ctx = self._challenges.get(name) or self._hosts.get(name)
        if ctx is not None:
            return ctx
        _, _, parent = name.partition(".")
        return self._wildcards.get(parent, self._default)

    def _pick(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        ctx = self.context_for(server_name)
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if ctx is not self._default:
            # The server context already carries the default certificate; switching the
            # SSL_CTX (a few microseconds) is needed only for the other hosts.
            sslobj.context = ctx
        return None
