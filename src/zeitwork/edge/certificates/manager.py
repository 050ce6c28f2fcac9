"""Keeps the TLS terminator's certificates present and fresh.

Each pass: load every issued certificate from the store into the terminator (so a
certificate ordered by another edge is served here too), then order what is due (missing,
failed after its back-off, or at two thirds of its lifetime; in internal mode also one
another CA issued). ACME orders take the store's
lease first, so one edge orders a given certificate at a time; a failure is written back
with its error, attempt count and next attempt time, and counted in metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Literal, Protocol

from zeitwork.clients.certificates import AcmeAccountRecord, CertificateRecord
from zeitwork.core.errors import ZeitworkError
from zeitwork.edge.certificates.acme import AcmeError, AcmeIssuer
from zeitwork.edge.certificates.internal_ca import InternalCA
from zeitwork.edge.certificates.renewal import failed, is_due
from zeitwork.edge.certificates.store import EdgeCertificateStore
from zeitwork.edge.certificates.x509 import CertificateError
from zeitwork.observability import get_logger

log = get_logger("zeitwork.edge.certificates")

Mode = Literal["static", "internal", "acme"]
OrderResult = Callable[[str, str], None]  # (source, result)


class CertificateSlot(Protocol):
    """Where issued certificates are served (``edge.tls.TlsTerminator``, which reads them
    through this package's ``x509``: it depends on the package, not the other way)."""

    def install(self, domain: str, chain_pem: str, key_pem: str) -> object: ...


class CertificateManager:
    def __init__(
        self,
        *,
        store: EdgeCertificateStore,
        tls: CertificateSlot,
        mode: Mode,
        domains: Callable[[], Iterable[str]],
        holder: str,
        internal_ca: InternalCA | None = None,
        share_ca: Callable[[], Awaitable[InternalCA]] | None = None,
        issuer: AcmeIssuer | None = None,
        on_order: OrderResult | None = None,
        retry_base: float = 60.0,
        lease_ttl: int = 300,
        orders: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._tls = tls
        self._mode = mode
        self._domains = domains
        self._holder = holder
        self._ca = internal_ca
        # how to get the internal CA every edge shares: tried on every pass until it
        # answers (the first, unless the operator is unreachable); until then ``internal_ca``
        self._share_ca = share_ca
        self._issuer = issuer
        self._on_order = on_order or (lambda source, result: None)
        self._retry_base = retry_base
        self._lease_ttl = lease_ttl
        self._clock = clock
        self._orders = orders
        self.failing: dict[str, int] = {}  # domain -> failed attempts in a row (for metrics)
        self._installed: dict[str, str] = {}
        self.wake = asyncio.Event()

    async def sync_once(self) -> None:
        records = {r.domain: r for r in await self._store.list()}
        self.failing = {
            r.domain: r.attempts for r in records.values() if r.last_error and r.attempts
        }
        for record in records.values():
            self._install(record)
        if self._mode == "static" or not self._orders:
            return
        if self._share_ca is not None:
            await self._adopt_shared_ca()
        now = self._clock()
        for domain in sorted(set(self._domains())):
            if self._due(records.get(domain), now):
                await self._order(domain, records.get(domain))

    def _due(self, record: CertificateRecord | None, now: datetime) -> bool:
        """Missing, failed, or at two thirds of its lifetime; in internal mode also a
        certificate another CA issued (an edge's own CA before the shared one was adopted,
        or from before the CA was shared at all): clients trust the shared CA only."""
        if is_due(record, now):
            return True
        ca = self._ca
        return (
            self._mode == "internal"
            and ca is not None
            and record is not None
            and record.source == "internal"
            and record.cert_pem is not None
            and not ca.issued(record.cert_pem)
        )

    async def _adopt_shared_ca(self) -> None:
        share = self._share_ca
        assert share is not None
        try:
            async with asyncio.timeout(10):
                ca = await share()
        except (ZeitworkError, TimeoutError) as exc:
            log.warning("internal_ca.not_shared", error=str(exc) or type(exc).__name__)
            return
        self._share_ca = None
        if self._ca is None or ca.cert_pem != self._ca.cert_pem:
            log.info("internal_ca.adopted")
        self._ca = ca

    def _install(self, record: CertificateRecord) -> None:
        if record.status != "issued" or not record.cert_pem:
            return
        if self._installed.get(record.domain) == record.cert_pem:
            return
        try:
            self._tls.install(record.domain, record.cert_pem, record.key_pem)
        except CertificateError as exc:
            log.warning("certificate.unusable", domain=record.domain, error=str(exc))
            return
        self._installed[record.domain] = record.cert_pem
        log.info("certificate.installed", domain=record.domain, source=record.source)

    async def _order(self, domain: str, seen: CertificateRecord | None) -> None:
        if not await self._store.acquire_lease(domain, self._holder, self._lease_ttl):
            log.info("certificate.lease_busy", domain=domain)
            return
        try:
            # Another edge may have finished an order since the list was read: check again
            # now that this edge holds the lease.
            current = await self._store.get(domain)
            if not self._due(current, self._clock()):
                if current is not None:
                    self._install(current)
                return
            if self._ca is not None and self._mode == "internal":
                record = self._ca.issue(domain)
                await self._store.put(record)
                self._install(record)
                self._on_order("internal", "issued")
                return
            if self._issuer is None:
                raise RuntimeError(f"no certificate issuer for mode {self._mode}")
            await self._order_acme(domain, current, self._issuer)
        finally:
            await self._store.release_lease(domain, self._holder)

    async def _order_acme(
        self, domain: str, current: CertificateRecord | None, issuer: AcmeIssuer
    ) -> None:
        if current is None:
            await self._store.put(CertificateRecord(domain=domain, status="pending"))
        log.info("certificate.ordering", domain=domain)
        try:
            record = await asyncio.to_thread(issuer.issue, domain)
        except (AcmeError, CertificateError) as exc:
            record = failed(current, domain, str(exc), self._clock(), base=self._retry_base)
            await self._store.put(record)
            self.failing[domain] = record.attempts
            self._on_order("acme", "failed")
            log.warning(
                "certificate.order_failed",
                domain=domain,
                error=str(exc),
                attempts=record.attempts,
                next_attempt_at=str(record.next_attempt_at),
            )
            return
        await self._store.put(record)
        self._install(record)
        self.failing.pop(domain, None)
        self._on_order("acme", "issued")
        log.info("certificate.issued", domain=domain, not_after=str(record.not_after))

    async def run(self, interval: float) -> None:
        while True:
            try:
                await self.sync_once()
            except Exception as exc:  # the loop reports and retries on the next pass
                log.warning("certificate.sync_failed", error=f"{type(exc).__name__}: {exc}")
            self.wake.clear()
            try:
                async with asyncio.timeout(interval):
                    await self.wake.wait()
            except TimeoutError:
                pass


def account_bridge(
    store: EdgeCertificateStore, loop: asyncio.AbstractEventLoop
) -> tuple[Callable[[str], AcmeAccountRecord | None], Callable[[AcmeAccountRecord], None]]:
    """Sync callbacks (for the ACME worker thread) onto the async store."""

    def load(directory: str) -> AcmeAccountRecord | None:
        return asyncio.run_coroutine_threadsafe(store.get_account(directory), loop).result(30)

    def save(account: AcmeAccountRecord) -> None:
        asyncio.run_coroutine_threadsafe(store.put_account(account), loop).result(30)

    return load, save
