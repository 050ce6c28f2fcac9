"""Pending ACME challenge answers, shared by the plain-HTTP listener and TLS terminator."""

from __future__ import annotations

from zeitwork.edge.tls import TlsTerminator


class Challenges:
    """The ``ChallengeBoard`` of the edge: HTTP-01 tokens and TLS-ALPN-01 certificates."""

    def __init__(self, *, tls: TlsTerminator) -> None:
        self._http: dict[str, str] = {}
        self._tls = tls

    def answer(self, token: str) -> str | None:
        return self._http.get(token)

    def publish_http(self, token: str, key_authorization: str) -> None:
        self._http[token] = key_authorization

    def withdraw_http(self, token: str) -> None:
        self._http.pop(token, None)

    def publish_tls_alpn(self, domain: str, cert_pem: str, key_pem: str) -> None:
        self._tls.set_challenge(domain, cert_pem, key_pem)

    def withdraw_tls_alpn(self, domain: str) -> None:
        self._tls.clear_challenge(domain)
