"""TLS termination: one server context whose SNI callback picks a per-host context.

- TLS 1.2 and 1.3 only; TLS 1.2 restricted to ECDHE with AES-GCM or ChaCha20-Poly1305.
- ALPN ``h2`` and ``http/1.1`` (``EDGE_HTTP2``), or ``http/1.1`` alone.
- ``install`` builds a fresh context for a host and swaps it into the table: connections
  already open keep the context they shook hands with, new handshakes get the new one, so
  a certificate change needs no restart and drops nothing.
- TLS-ALPN-01 (RFC 8737): while a challenge for a host is pending, a handshake for that host
  whose ClientHello offers ALPN ``acme-tls/1`` (the CA's validation) gets the challenge
  context; every other client of the host keeps getting the host's real certificate. Python's
  SNI callback does not see the client's ALPN list, so while (and only while) a challenge is
  pending the server context also gets a message callback that reads the ClientHello, which
  OpenSSL hands over before it calls the SNI callback. With no challenge pending the handshake
  path carries no extra callback.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from zeitwork.edge.certificates.x509 import CertificateError, CertInfo, inspect
from zeitwork.edge.tls_transport import ServerNameSlot

ALPN_HTTP1 = "http/1.1"
ALPN_H2 = "h2"
ALPN_ACME = "acme-tls/1"
_ALPN_ACME_B = ALPN_ACME.encode()
_HANDSHAKE = 22  # TLS content type
_CLIENT_HELLO = 1  # handshake message type
_EXT_ALPN = 16
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS"


def offered_alpn(message: bytes) -> list[bytes] | None:
    """The ALPN protocol names offered by a ClientHello handshake message (with its 4-byte
    handshake header); None when it has no ALPN extension or is not a well-formed hello."""
    try:
        if len(message) < 4 or message[0] != _CLIENT_HELLO:
            return None
        end = min(len(message), 4 + int.from_bytes(message[1:4], "big"))
        i = 4 + 2 + 32  # legacy version, random
        i += 1 + message[i]  # session id
        i += 2 + int.from_bytes(message[i : i + 2], "big")  # cipher suites
        i += 1 + message[i]  # compression methods
        if i + 2 > end:
            return None
        ext_end = min(end, i + 2 + int.from_bytes(message[i : i + 2], "big"))
        i += 2
        while i + 4 <= ext_end:
            kind = int.from_bytes(message[i : i + 2], "big")
            size = int.from_bytes(message[i + 2 : i + 4], "big")
            i += 4
            if i + size > ext_end:
                return None
            if kind == _EXT_ALPN:
                body = message[i : i + size]
                names: list[bytes] = []
                j, stop = 2, min(len(body), 2 + int.from_bytes(body[:2], "big"))
                while j < stop:
                    n = body[j]
                    names.append(bytes(body[j + 1 : j + 1 + n]))
                    j += 1 + n
                return names
            i += size
    except IndexError:
        return None
    return None


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
    """The certificate table and the server ``SSLContext`` that consults it.

    A handshake without SNI, or naming a host with no certificate of its own, gets the
    default certificate: the one ``set_default`` gave, the static certificate's first name,
    or ``default_domain``'s once installed. With none of those it fails (alert
    ``unrecognized_name``): such a client never gets another app's certificate."""

    def __init__(self, *, default_domain: str | None = None, http2: bool = False) -> None:
        # ALPN of every context but the challenges': ``h2`` first when HTTP/2 is on
        self._alpn = [ALPN_H2, ALPN_HTTP1] if http2 else [ALPN_HTTP1]
        self._hosts: dict[str, ssl.SSLContext] = {}
        self._wildcards: dict[str, ssl.SSLContext] = {}
        self._challenges: dict[str, ssl.SSLContext] = {}
        # ids of the SSL objects whose ClientHello offered acme-tls/1 (while challenges exist)
        self._acme_offers: set[int] = set()
        self._default: ssl.SSLContext | None = None
        self._default_name = default_domain.lower().rstrip(".") if default_domain else None
        self._expiry: dict[str, datetime] = {}
        self.server_context = _base_context(self._alpn)
        self.server_context.sni_callback = self._pick
        # where ``_pick`` leaves the name it was given, for the TLS layer (ClientInfo.sni)
        self.server_names = ServerNameSlot()

    # -- table ------------------------------------------------------------------------

    def install(
        self, domain: str, chain_pem: str, key_pem: str, *, default: bool = False
    ) -> CertInfo:
        """Serve ``chain_pem`` for ``domain`` (``*.x`` for a wildcard) from now on."""
        info = inspect(chain_pem, key_pem)
        ctx = host_context(chain_pem, key_pem, alpn=self._alpn)
        domain = domain.lower().rstrip(".")
        if domain.startswith("*."):
            self._wildcards[domain[2:]] = ctx
        else:
            self._hosts[domain] = ctx
        self._expiry[domain] = info.not_after
        if default or domain == self._default_name:
            self._default = ctx
            self._default_name = domain
            # The base context itself also needs a certificate: some clients send no SNI.
            _load(self.server_context, chain_pem, key_pem)
        return info

    def set_default(self, chain_pem: str, key_pem: str) -> CertInfo:
        """The certificate for handshakes without SNI or for a host with none of its own."""
        info = inspect(chain_pem, key_pem)
        ctx = host_context(chain_pem, key_pem, alpn=self._alpn)
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
        # ssl's message hook (private by name, present since Python 3.8, used by CPython's own
        # tests; tests/unit/edge/test_tls.py fails if it goes): the one way to read the
        # client's ALPN offer before the SNI callback picks a context
        self.server_context._msg_callback = self._on_message  # type: ignore[attr-defined]

    def clear_challenge(self, domain: str) -> None:
        self._challenges.pop(domain.lower(), None)
        if not self._challenges:
            self.server_context._msg_callback = None  # type: ignore[attr-defined]
            self._acme_offers.clear()

    def _on_message(  # noqa: PLR0917 - the signature is ssl's message callback
        self,
        conn: object,
        direction: str,
        version: object,
        content_type: int,
        msg_type: int,
        data: bytes,
    ) -> None:
        if direction != "read" or content_type != _HANDSHAKE or msg_type != _CLIENT_HELLO:
            return
        offers = offered_alpn(data)
        if offers is not None and _ALPN_ACME_B in offers:
            self._acme_offers.add(id(conn))
        else:
            self._acme_offers.discard(id(conn))  # an id reused by a later connection

    # -- handshake --------------------------------------------------------------------

    def context_for(self, server_name: str | None, *, acme: bool = False) -> ssl.SSLContext | None:
        """The context for a handshake naming ``server_name``; ``acme``: the client offered
        ALPN acme-tls/1 (a TLS-ALPN-01 validation), which alone gets a challenge context."""
        if server_name is None:
            return self._default
        name = server_name.lower().rstrip(".")
        ctx = (self._challenges.get(name) if acme else None) or self._hosts.get(name)
        if ctx is not None:
            return ctx
        _, _, parent = name.partition(".")
        return self._wildcards.get(parent, self._default)

    def _pick(self, sslobj: Any, server_name: str | None, _: ssl.SSLContext) -> int | None:
        # sslobj: the _ssl object of the handshake (the edge's TLS layer passes no wrapper);
        # assigning its ``context`` switches the certificate for this handshake
        acme = False
        if self._challenges:
            key = id(sslobj)
            acme = key in self._acme_offers
            self._acme_offers.discard(key)
        ctx = self.context_for(server_name, acme=acme)
        if ctx is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        if server_name is not None:
            self.server_names.name = server_name.lower().rstrip(".")
        if ctx is not self._default:
            # The server context already carries the default certificate; switching the
            # SSL_CTX (a few microseconds) is needed only for the other hosts.
            sslobj.context = ctx
        return None
