"""Certificates, leases and the ACME account, stored by the operator (``proxy`` token).

Endpoints (see the cross-helper contract):

- ``GET /api/v1/certificates`` -> list of certificate records
- ``PUT /api/v1/certificates/{domain}`` -> upsert one record
- ``POST /api/v1/certificates/{domain}/lease`` -> 200 taken, 409 held by another edge
- ``DELETE /api/v1/certificates/{domain}/lease?holder=H`` -> release
- ``GET|PUT /api/v1/acme/account?directory=URL`` -> the account key for one directory

The record types live here (the lowest layer that needs them) so that the edge's store
protocol and this client share them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from zeitwork.clients.factory import ClientOptions, http_client, map_http_errors, raise_for_status
from zeitwork.core.errors import Conflict, InvalidInput, NotFound

CertificateStatus = Literal["pending", "issued", "failed"]
CertificateSource = Literal["acme", "internal", "static"]


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    domain: str
    cert_pem: str = ""
    key_pem: str = ""
    status: CertificateStatus = "pending"
    source: CertificateSource = "acme"
    not_before: datetime | None = None
    not_after: datetime | None = None
    last_error: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None

    def evolve(self, **changes: Any) -> CertificateRecord:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class AcmeAccountRecord:
    directory: str
    key_pem: str
    account_url: str


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def record_from_json(data: dict[str, Any]) -> CertificateRecord:
    try:
        return CertificateRecord(
            domain=str(data["domain"]),
            cert_pem=str(data.get("cert_pem") or ""),
            key_pem=str(data.get("key_pem") or ""),
            status=data.get("status") or "pending",
            source=data.get("source") or "acme",
            not_before=_time(data.get("not_before")),
            not_after=_time(data.get("not_after")),
            last_error=data.get("last_error"),
            attempts=int(data.get("attempts") or 0),
            next_attempt_at=_time(data.get("next_attempt_at")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"malformed certificate record: {exc}") from exc


def record_to_json(record: CertificateRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in asdict(record).items():
        out[key] = value.isoformat() if isinstance(value, datetime) else value
    return out


class CertificateClient:
    """The operator-backed certificate store used by edges in production."""

    def __init__(self, *, base_url: str, token: str | None, verify: bool | str = True) -> None:
        self._http: httpx.AsyncClient = http_client(
            ClientOptions(base_url=base_url, token=token, verify=verify, read_timeout=15.0)
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list(self) -> list[CertificateRecord]:
        with map_http_errors("operator"):
            response = await self._http.get("/api/v1/certificates")
        raise_for_status(response)
        body = response.json()
        if not isinstance(body, list):
            raise InvalidInput("operator: certificate list is not a list")
        return [record_from_json(item) for item in body]

    async def get(self, domain: str) -> CertificateRecord | None:
        for record in await self.list():
            if record.domain == domain:
                return record
        return None

    async def put(self, record: CertificateRecord) -> None:
        body = record_to_json(record)
        body.pop("domain")
        body.pop("not_before")
        body.pop("not_after")
        with map_http_errors("operator"):
            response = await self._http.put(f"/api/v1/certificates/{record.domain}", json=body)
        raise_for_status(response)

    async def acquire_lease(self, domain: str, holder: str, ttl_seconds: int) -> bool:
        with map_http_errors("operator"):
            response = await self._http.post(
                f"/api/v1/certificates/{domain}/lease",
                json={"holder": holder, "ttl_seconds": ttl_seconds},
            )
        try:
            raise_for_status(response)
        except Conflict:
            return False
        return True

    async def release_lease(self, domain: str, holder: str) -> None:
        with map_http_errors("operator"):
            response = await self._http.delete(
                f"/api/v1/certificates/{domain}/lease", params={"holder": holder}
            )
        try:
            raise_for_status(response)
        except (NotFound, Conflict):
            return

    async def get_account(self, directory: str) -> AcmeAccountRecord | None:
        with map_http_errors("operator"):
            response = await self._http.get("/api/v1/acme/account", params={"directory": directory})
        try:
            raise_for_status(response)
        except NotFound:
            return None
        data = response.json()
        return AcmeAccountRecord(
            directory=str(data["directory"]),
            key_pem=str(data["key_pem"]),
            account_url=str(data.get("account_url") or ""),
        )

    async def put_account(self, account: AcmeAccountRecord) -> None:
        with map_http_errors("operator"):
            response = await self._http.put("/api/v1/acme/account", json=asdict(account))
        raise_for_status(response)

    async def offer_internal_ca(self, cert_pem: str, key_pem: str) -> tuple[str, str]:
        """The internal CA every edge shares: the stored one, or this one if none is yet."""
        with map_http_errors("operator"):
            response = await self._http.post(
                "/api/v1/internal-ca", json={"cert_pem": cert_pem, "key_pem": key_pem}
            )
        raise_for_status(response)
        data = response.json()
        return str(data["cert_pem"]), str(data["key_pem"])
