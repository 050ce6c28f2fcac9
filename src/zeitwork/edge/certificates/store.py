"""Where certificates, ACME accounts and ordering leases live.

Production edges use the operator (``zeitwork.clients.certificates.CertificateClient``), so
every edge node serves the same certificates. ``LocalStore`` keeps them in memory and,
given a directory, in one JSON file per domain (private keys inside: the directory is 0700
and files 0600); it serves tests and a single edge running without an operator.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from zeitwork.clients.certificates import (
    AcmeAccountRecord,
    CertificateRecord,
    record_from_json,
    record_to_json,
)
from zeitwork.core.files import atomic_write_text


class EdgeCertificateStore(Protocol):
    async def list(self) -> list[CertificateRecord]: ...

    async def get(self, domain: str) -> CertificateRecord | None: ...

    async def put(self, record: CertificateRecord) -> None: ...

    async def acquire_lease(self, domain: str, holder: str, ttl_seconds: int) -> bool: ...

    async def release_lease(self, domain: str, holder: str) -> None: ...

    async def get_account(self, directory: str) -> AcmeAccountRecord | None: ...

    async def put_account(self, account: AcmeAccountRecord) -> None: ...

    async def offer_internal_ca(self, cert_pem: str, key_pem: str) -> tuple[str, str]:
        """The internal CA (certificate, key) for issuing: a store shared by several edges
        keeps the first CA offered and returns it to every edge; the local store (one
        edge's own) returns the offer."""
        ...


class LocalStore:
    """In-memory store, persisted to ``directory`` when one is given."""

    def __init__(self, *, directory: Path | None = None) -> None:
        self._records: dict[str, CertificateRecord] = {}
        self._accounts: dict[str, AcmeAccountRecord] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._dir = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._reload()
            accounts = directory / "acme-accounts.json"
            if accounts.exists():
                for item in json.loads(accounts.read_text()):
                    self._accounts[item["directory"]] = AcmeAccountRecord(**item)

    def _reload(self) -> None:
        # Other processes (edge workers) may have written: the files are the truth.
        assert self._dir is not None
        for path in sorted(self._dir.glob("cert-*.json")):
            try:
                record = record_from_json(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
            self._records[record.domain] = record

    async def list(self) -> list[CertificateRecord]:
        if self._dir is not None:
            self._reload()
        return list(self._records.values())

    async def get(self, domain: str) -> CertificateRecord | None:
        return self._records.get(domain)

    async def put(self, record: CertificateRecord) -> None:
        self._records[record.domain] = record
        if self._dir is not None:
            atomic_write_text(
                self._dir / f"cert-{record.domain}.json",
                json.dumps(record_to_json(record)),
                mode=0o600,
            )

    async def acquire_lease(self, domain: str, holder: str, ttl_seconds: int) -> bool:
        now = datetime.now(UTC)
        current = self._leases.get(domain)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[domain] = (holder, now + timedelta(seconds=ttl_seconds))
        return True

    async def release_lease(self, domain: str, holder: str) -> None:
        current = self._leases.get(domain)
        if current is not None and current[0] == holder:
            del self._leases[domain]

    async def get_account(self, directory: str) -> AcmeAccountRecord | None:
        return self._accounts.get(directory)

    async def offer_internal_ca(self, cert_pem: str, key_pem: str) -> tuple[str, str]:
        return cert_pem, key_pem  # this edge's alone: its own CA (kept by InternalCA)

    async def put_account(self, account: AcmeAccountRecord) -> None:
        self._accounts[account.directory] = account
        if self._dir is not None:
            atomic_write_text(
                self._dir / "acme-accounts.json",
                json.dumps([asdict(a) for a in self._accounts.values()]),
                mode=0o600,
            )
