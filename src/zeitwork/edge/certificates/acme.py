"""ACME (RFC 8555) issuance with the ``acme`` library: HTTP-01 and TLS-ALPN-01.

The library is synchronous (it speaks HTTP through ``requests``); the manager runs
``AcmeIssuer.issue`` in a worker thread. The challenge answers are published through a
``ChallengeBoard``: the plain-HTTP listener answers ``/.well-known/acme-challenge/<token>``
from it and the TLS terminator serves the TLS-ALPN-01 certificate from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from acme import challenges, client, errors, messages
from acme import crypto_util as acme_crypto
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from josepy import b64 as jose_b64
from josepy import errors as jose_errors
from josepy import jwa, jwk

from zeitwork.clients.certificates import AcmeAccountRecord, CertificateRecord
from zeitwork.edge.certificates.x509 import inspect, key_pem, load_key, new_key

ChallengeType = Literal["http-01", "tls-alpn-01"]
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")


class AcmeError(Exception):
    """An order failed (challenge invalid, CA refused, network); ``str`` says why."""


class ChallengeBoard(Protocol):
    def publish_http(self, token: str, key_authorization: str) -> None: ...

    def withdraw_http(self, token: str) -> None: ...

    def publish_tls_alpn(self, domain: str, cert_pem: str, key_pem: str) -> None: ...

    def withdraw_tls_alpn(self, domain: str) -> None: ...


class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) response to a ``tls-alpn-01`` challenge (RFC 8737)."""

    typ = "tls-alpn-01"


if "tls-alpn-01" not in challenges.ChallengeResponse.TYPES:
    challenges.ChallengeResponse.register(TLSALPN01Response)


def tls_alpn_certificate(domain: str, key_authorization: str) -> tuple[str, str]:
    """The self-signed certificate carrying the acmeIdentifier extension for ``domain``."""
    key = new_key("ec")
    digest = hashlib.sha256(key_authorization.encode()).digest()
    der_octet_string = b"\x04\x20" + digest
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, der_octet_string), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key)


@dataclass(frozen=True, slots=True)
class AcmeOptions:
    directory: str
    ca_bundle: str | None = None  # path to trust for the directory's TLS (None: system)
    email: str | None = None
    challenge: ChallengeType = "http-01"
    timeout_seconds: float = 90.0
    key_kind: str = "ec"


class AcmeIssuer:
    """Orders one certificate at a time (call ``issue`` from a worker thread)."""

    def __init__(
        self,
        *,
        options: AcmeOptions,
        board: ChallengeBoard,
        load_account: Callable[[str], AcmeAccountRecord | None],
        save_account: Callable[[AcmeAccountRecord], None],
    ) -> None:
        self._options = options
        self._board = board
        self._load_account = load_account
        self._save_account = save_account
        self._client: client.ClientV2 | None = None

    def _network(self, key: jwk.JWK, account: Any = None) -> client.ClientNetwork:
        verify: Any = self._options.ca_bundle if self._options.ca_bundle else True
        return client.ClientNetwork(
            key, account=account, alg=jwa.ES256, verify_ssl=verify, user_agent="zeitwork-edge"
        )

    def _acme_client(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        directory_url = self._options.directory
        stored = self._load_account(directory_url)
        if stored is not None:
            account_jwk = jwk.JWKEC(key=load_key(stored.key_pem))
            net = self._network(account_jwk)
            directory = client.ClientV2.get_directory(directory_url, net)
            acme = client.ClientV2(directory, net)
            uri = stored.account_url
            if not uri:
                try:
                    found = acme.new_account(
                        messages.NewRegistration(
                            key=account_jwk.public_key(),
                            only_return_existing=True,
                            terms_of_service_agreed=True,
                        )
                    )
                    uri = found.uri
                except errors.ConflictError as exc:  # the library's "account exists" answer
                    uri = exc.location
            regr = messages.RegistrationResource(uri=uri, body=messages.Registration())
        else:
            account_key = new_key("ec")
            account_jwk = jwk.JWKEC(key=account_key)
            net = self._network(account_jwk)
            directory = client.ClientV2.get_directory(directory_url, net)
            acme = client.ClientV2(directory, net)
            registration = messages.NewRegistration.from_data(
                email=self._options.email, terms_of_service_agreed=True
            )
            regr = acme.new_account(registration)
            self._save_account(
                AcmeAccountRecord(
                    directory=directory_url, key_pem=key_pem(account_key), account_url=regr.uri
                )
            )
        net.account = regr
        self._client = acme
        return acme

    def issue(self, domain: str) -> CertificateRecord:
        try:
            return self._issue(domain)
        except AcmeError:
            self._client = None
            raise
        except (errors.Error, jose_errors.Error) as exc:
            self._client = None  # start afresh next time (nonces, directory, account)
            raise AcmeError(f"{type(exc).__name__}: {exc}") from exc
        except messages.Error as exc:
            self._client = None
            raise AcmeError(str(exc)) from exc
        except OSError as exc:  # includes every requests exception
            self._client = None
            raise AcmeError(f"cannot reach the ACME server: {exc}") from exc

    def _issue(self, domain: str) -> CertificateRecord:
        acme = self._acme_client()
        cert_key = new_key(self._options.key_kind)
        cert_key_pem = key_pem(cert_key)
        csr = acme_crypto.make_csr(cert_key_pem.encode(), [domain])
        order = acme.new_order(csr)
        account_key = acme.net.key
        if account_key is None:
            raise AcmeError("ACME client has no account key")
        published: list[Callable[[], None]] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue
                challb = self._pick(authz)
                chall = challb.chall
                if isinstance(chall, challenges.UnrecognizedChallenge):
                    token = str(chall.jobj["token"])
                else:
                    token = chall.encode("token")
                thumb = jose_b64.b64encode(
                    account_key.thumbprint(hash_function=hashes.SHA256)
                ).decode()
                key_auth = f"{token}.{thumb}"
                if self._options.challenge == "http-01":
                    self._board.publish_http(token, key_auth)
                    published.append(lambda t=token: self._board.withdraw_http(t))  # type: ignore[misc]
                    response: Any = chall.response(account_key)
                else:
                    cert_pem, ck = tls_alpn_certificate(domain, key_auth)
                    self._board.publish_tls_alpn(domain, cert_pem, ck)
                    published.append(lambda: self._board.withdraw_tls_alpn(domain))
                    response = TLSALPN01Response()
                acme.answer_challenge(challb, response)
            deadline = datetime.now() + timedelta(seconds=self._options.timeout_seconds)
            try:
                finished = acme.poll_and_finalize(order, deadline)
            except errors.ValidationError as exc:
                reasons = "; ".join(
                    str(ch.error)
                    for a in exc.failed_authzrs
                    for ch in a.body.challenges
                    if ch.error
                )
                raise AcmeError(f"challenge failed for {domain}: {reasons or exc}") from exc
        finally:
            for undo in published:
                undo()
        chain = finished.fullchain_pem
        info = inspect(chain, cert_key_pem)
        return CertificateRecord(
            domain=domain,
            cert_pem=chain,
            key_pem=cert_key_pem,
            status="issued",
            source="acme",
            not_before=info.not_before,
            not_after=info.not_after,
        )

    def _pick(self, authz: messages.AuthorizationResource) -> messages.ChallengeBody:
        wanted = self._options.challenge
        for challb in authz.body.challenges:
            chall = challb.chall
            if isinstance(chall, challenges.UnrecognizedChallenge):
                typ = chall.jobj.get("type")
            else:
                typ = getattr(chall, "typ", None)
            if typ == wanted:
                return challb
        raise AcmeError(f"the ACME server offered no {wanted} challenge")
