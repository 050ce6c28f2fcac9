"""Certificates, issuance leases and the ACME account, for edges (``proxy``) and admins.

- ``GET /certificates``: every certificate record (with private keys: proxy/admin only);
- ``PUT /certificates/{domain}``: upsert; the certificate (chain) and key must be valid PEM,
  and with ``status: issued`` both are required and must belong together; ``not_before`` /
  ``not_after`` are read from the leaf certificate;
- ``POST /certificates/{domain}/lease`` ``{holder, ttl_seconds <= 600}``: 200 when free,
  expired or already held by ``holder``, else 409; ``DELETE ...?holder=H`` releases;
- ``GET|PUT /acme/account?directory=URL``;
- ``POST /internal-ca`` ``{cert_pem, key_pem}``: the edges' shared internal CA, the stored one
  or this one when there is none yet (the first offer wins; every caller gets the winner);
  ``GET /internal-ca``: its certificate only (for clients to trust), 404 before any edge
  made one.

Private keys are stored in PostgreSQL: protect the database accordingly.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from zeitwork.core.errors import InvalidInput
from zeitwork.operator.api.security import require
from zeitwork.operator.db.certificates import AcmeAccountRow, Certificate, CertificateWrite
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.wire.admin import check_hostname

Status = Literal["pending", "issued", "failed"]
Source = Literal["acme", "internal", "static"]
MAX_PEM = 64 * 1024


class CertificateOut(BaseModel):
    domain: str
    cert_pem: str | None
    key_pem: str | None
    not_before: datetime | None
    not_after: datetime | None
    status: Status
    source: Source
    last_error: str | None
    attempts: int
    next_attempt_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, c: Certificate) -> CertificateOut:
        return cls(
            domain=c.domain,
            cert_pem=c.cert_pem,
            key_pem=c.key_pem,
            not_before=c.not_before,
            not_after=c.not_after,
            status=c.status,  # type: ignore[arg-type]
            source=c.source,  # type: ignore[arg-type]
            last_error=c.last_error,
            attempts=c.attempts,
            next_attempt_at=c.next_attempt_at,
            updated_at=c.updated_at,
        )


class CertificatePut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_pem: str | None = Field(default=None, max_length=MAX_PEM)
    key_pem: str | None = Field(default=None, max_length=MAX_PEM)
    status: Status = "pending"
    source: Source = "acme"
    last_error: str | None = Field(default=None, max_length=4000)
    attempts: int = Field(default=0, ge=0, le=1_000_000)
    next_attempt_at: datetime | None = None


class CertificateLeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    holder: str = Field(min_length=1, max_length=200)
    ttl_seconds: int = Field(ge=1, le=600)


class LeaseOut(BaseModel):
    holder: str
    expires_at: datetime


class AcmeAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: str = Field(min_length=1, max_length=2000)
    key_pem: str = Field(min_length=1, max_length=MAX_PEM)
    account_url: str | None = Field(default=None, max_length=2000)


class InternalCaOffer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_pem: str = Field(min_length=1, max_length=MAX_PEM)
    key_pem: str = Field(min_length=1, max_length=MAX_PEM)


class InternalCaCertificate(BaseModel):
    cert_pem: str


class InternalCaOut(InternalCaCertificate):
    key_pem: str


def checked_ca(body: InternalCaOffer) -> None:
    """A self-contained CA: one certificate that may sign others, and its key."""
    try:
        certs = x509.load_pem_x509_certificates(body.cert_pem.encode())
    except ValueError as exc:
        raise InvalidInput("cert_pem is not a PEM certificate") from exc
    if len(certs) != 1:
        raise InvalidInput("cert_pem must hold exactly one certificate")
    try:
        constraints = certs[0].extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise InvalidInput("cert_pem is not a CA certificate (basicConstraints CA:TRUE)")
    try:
        key = serialization.load_pem_private_key(body.key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("key_pem is not an unencrypted PEM private key") from exc
    if _spki(certs[0]) != _spki(key):
        raise InvalidInput("cert_pem and key_pem do not belong together")


def _spki(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    return bytes(
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def checked_write(domain: str, body: CertificatePut) -> CertificateWrite:
    """Validate the PEM material (pure); InvalidInput names what is wrong."""
    cert_pem = body.cert_pem or None
    key_pem = body.key_pem or None
    not_before = not_after = None
    leaf = key = None
    if cert_pem is not None:
        try:
            chain = x509.load_pem_x509_certificates(cert_pem.encode())
        except ValueError as exc:
            raise InvalidInput("cert_pem is not a PEM certificate (chain)") from exc
        leaf = chain[0]
        not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if key_pem is not None:
        try:
            key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInput("key_pem is not an unencrypted PEM private key") from exc
    if body.status == "issued" and (leaf is None or key is None):
        raise InvalidInput("an issued certificate needs both cert_pem and key_pem")
    if leaf is not None and key is not None and _spki(leaf) != _spki(key):
        raise InvalidInput("cert_pem and key_pem do not belong together")
    return CertificateWrite(
        domain=domain,
        cert_pem=cert_pem,
        key_pem=key_pem,
        not_before=not_before,
        not_after=not_after,
        status=body.status,
        source=body.source,
        last_error=body.last_error,
        attempts=body.attempts,
        next_attempt_at=body.next_attempt_at,
    )


def _domain(value: str) -> str:
    try:
        return check_hostname(value)
    except ValueError as exc:
        raise InvalidInput(f"{value!r} is not a domain name") from exc


DomainPath = Annotated[str, Path(max_length=253, description="the host name")]


def router(deps: Deps) -> APIRouter:
    api = APIRouter(tags=["certificates"], dependencies=[Depends(require(deps, Scope.PROXY))])
    store = deps.certificates

    @api.get("/certificates")
    async def list_certificates() -> list[CertificateOut]:
        return [CertificateOut.of(c) for c in await store.list()]

    @api.put("/certificates/{domain}")
    async def put_certificate(domain: DomainPath, body: CertificatePut) -> CertificateOut:
        return CertificateOut.of(await store.upsert(checked_write(_domain(domain), body)))

    @api.post("/certificates/{domain}/lease")
    async def take_lease(domain: DomainPath, body: CertificateLeaseRequest) -> LeaseOut:
        lease = await store.take_lease(_domain(domain), body.holder, body.ttl_seconds)
        return LeaseOut(holder=lease.holder, expires_at=lease.expires_at)

    @api.delete("/certificates/{domain}/lease", status_code=204)
    async def release_lease(
        domain: DomainPath, holder: Annotated[str, Query(min_length=1, max_length=200)]
    ) -> Response:
        await store.release_lease(_domain(domain), holder)
        return Response(status_code=204)

    @api.get("/acme/account")
    async def get_account(
        directory: Annotated[str, Query(min_length=1, max_length=2000)],
    ) -> AcmeAccount:
        row = await store.get_account(directory)
        return AcmeAccount(
            directory=row.directory, key_pem=row.key_pem, account_url=row.account_url
        )

    @api.put("/acme/account")
    async def put_account(body: AcmeAccount) -> AcmeAccount:
        try:
            serialization.load_pem_private_key(body.key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInput("key_pem is not an unencrypted PEM private key") from exc
        row = await store.put_account(
            AcmeAccountRow(
                directory=body.directory, key_pem=body.key_pem, account_url=body.account_url
            )
        )
        return AcmeAccount(
            directory=row.directory, key_pem=row.key_pem, account_url=row.account_url
        )

    @api.post("/internal-ca")
    async def offer_internal_ca(body: InternalCaOffer) -> InternalCaOut:
        checked_ca(body)
        cert_pem, key_pem = await store.offer_internal_ca(body.cert_pem, body.key_pem)
        return InternalCaOut(cert_pem=cert_pem, key_pem=key_pem)

    @api.get("/internal-ca")
    async def internal_ca() -> InternalCaCertificate:
        return InternalCaCertificate(cert_pem=await store.internal_ca_certificate())

    return api
