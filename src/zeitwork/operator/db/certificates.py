"""Certificates (one live row per domain), their issuance leases, ACME accounts, and the
internal CA the edges share.

Private keys are stored in PostgreSQL in clear: protect the database (and its backups)
like the keys themselves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from zeitwork.core.errors import Conflict, NotFound
from zeitwork.operator.db.database import Conn, Database


@dataclass(frozen=True, slots=True)
class Certificate:
    id: uuid.UUID
    domain: str
    cert_pem: str | None
    key_pem: str | None
    not_before: datetime | None
    not_after: datetime | None
    status: str
    source: str
    last_error: str | None
    attempts: int
    next_attempt_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CertificateWrite:
    domain: str
    cert_pem: str | None
    key_pem: str | None
    not_before: datetime | None
    not_after: datetime | None
    status: str
    source: str
    last_error: str | None
    attempts: int
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class Lease:
    domain: str
    holder: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class AcmeAccountRow:
    directory: str
    key_pem: str
    account_url: str | None


_C_COLUMNS = (
    "id, domain, cert_pem, key_pem, not_before, not_after, status, source, last_error, "
    "attempts, next_attempt_at, updated_at"
)


class CertificateStore:
    def __init__(self, *, db: Database) -> None:
        self._db = db

    async def list(self, *, conn: Conn | None = None) -> list[Certificate]:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_C_COLUMNS} FROM certificates WHERE deleted_at IS NULL ORDER BY domain"
            )
            rows = await cur.fetchall()
        return [Certificate(**r) for r in rows]

    async def upsert(self, w: CertificateWrite, *, conn: Conn | None = None) -> Certificate:
        params = {
            "domain": w.domain,
            "cert": w.cert_pem,
            "key": w.key_pem,
            "nb": w.not_before,
            "na": w.not_after,
            "status": w.status,
            "source": w.source,
            "err": w.last_error,
            "attempts": w.attempts,
            "next": w.next_attempt_at,
        }
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO certificates (domain, cert_pem, key_pem, not_before, not_after, "
                "status, source, last_error, attempts, next_attempt_at) VALUES (%(domain)s, "
                "%(cert)s, %(key)s, %(nb)s, %(na)s, %(status)s, %(source)s, %(err)s, "
                "%(attempts)s, %(next)s) "
                "ON CONFLICT (domain) WHERE deleted_at IS NULL DO UPDATE SET "
                "cert_pem = EXCLUDED.cert_pem, key_pem = EXCLUDED.key_pem, "
                "not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after, "
                "status = EXCLUDED.status, source = EXCLUDED.source, "
                "last_error = EXCLUDED.last_error, attempts = EXCLUDED.attempts, "
                f"next_attempt_at = EXCLUDED.next_attempt_at RETURNING {_C_COLUMNS}",
                params,
            )
            row = await cur.fetchone()
        assert row is not None
        return Certificate(**row)

    async def take_lease(
        self, domain: str, holder: str, ttl_seconds: int, *, conn: Conn | None = None
    ) -> Lease:
        """Take or renew the lease: free, expired or already ours -> ours; else Conflict."""
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO certificate_leases (domain, holder, expires_at) "
                "VALUES (%(d)s, %(h)s, now() + make_interval(secs => %(ttl)s)) "
                "ON CONFLICT (domain) DO UPDATE SET holder = EXCLUDED.holder, "
                "expires_at = EXCLUDED.expires_at "
                "WHERE certificate_leases.holder = EXCLUDED.holder "
                "OR certificate_leases.expires_at <= now() "
                "RETURNING domain, holder, expires_at",
                {"d": domain, "h": holder, "ttl": ttl_seconds},
            )
            row = await cur.fetchone()
            if row is not None:
                return Lease(**row)
            await cur.execute(
                "SELECT holder, expires_at FROM certificate_leases WHERE domain = %s", (domain,)
            )
            held = await cur.fetchone()
        extra: dict[str, Any] = {}
        if held is not None:
            extra = {"holder": held["holder"], "expires_at": held["expires_at"].isoformat()}
        raise Conflict(f"the certificate lease for {domain} is held by another holder", extra=extra)

    async def release_lease(self, domain: str, holder: str, *, conn: Conn | None = None) -> None:
        async with self._db.connection(conn) as c:
            cur = await c.execute(
                "DELETE FROM certificate_leases WHERE domain = %s AND holder = %s RETURNING id",
                (domain, holder),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"{holder!r} holds no lease for {domain}")

    async def get_account(self, directory: str, *, conn: Conn | None = None) -> AcmeAccountRow:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT directory, key_pem, account_url FROM acme_accounts "
                "WHERE directory = %s AND deleted_at IS NULL",
                (directory,),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no ACME account for {directory}")
        return AcmeAccountRow(**row)

    async def put_account(
        self, account: AcmeAccountRow, *, conn: Conn | None = None
    ) -> AcmeAccountRow:
        async with self._db.connection(conn) as c, c.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO acme_accounts (directory, key_pem, account_url) "
                "VALUES (%s, %s, %s) ON CONFLICT (directory) WHERE deleted_at IS NULL "
                "DO UPDATE SET key_pem = EXCLUDED.key_pem, account_url = EXCLUDED.account_url "
                "RETURNING directory, key_pem, account_url",
                (account.directory, account.key_pem, account.account_url),
            )
            row = await cur.fetchone()
        assert row is not None
        return AcmeAccountRow(**row)

    async def offer_internal_ca(
        self, cert_pem: str, key_pem: str, *, conn: Conn | None = None
    ) -> tuple[str, str]:
        """The internal CA (certificate, key): the stored one, or this one stored now when
        there is none yet. Concurrent offers all get the one that was stored first."""
        async with self._db.connection(conn) as c:
            await c.execute(
                "INSERT INTO internal_ca (cert_pem, key_pem) VALUES (%s, %s) "
                "ON CONFLICT ((true)) WHERE deleted_at IS NULL DO NOTHING",
                (cert_pem, key_pem),
            )
            cur = await c.execute(
                "SELECT cert_pem, key_pem FROM internal_ca WHERE deleted_at IS NULL"
            )
            row = await cur.fetchone()
        assert row is not None
        return str(row[0]), str(row[1])

    async def internal_ca_certificate(self, *, conn: Conn | None = None) -> str:
        async with self._db.connection(conn) as c:
            cur = await c.execute("SELECT cert_pem FROM internal_ca WHERE deleted_at IS NULL")
            row = await cur.fetchone()
        if row is None:
            raise NotFound("no internal CA yet: an edge in internal TLS mode creates it")
        return str(row[0])
