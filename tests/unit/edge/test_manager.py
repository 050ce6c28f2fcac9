from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from zeitwork.clients.certificates import CertificateRecord
from zeitwork.edge.certificates.acme import AcmeError, AcmeIssuer
from zeitwork.edge.certificates.internal_ca import InternalCA
from zeitwork.edge.certificates.manager import CertificateManager
from zeitwork.edge.certificates.store import LocalStore
from zeitwork.edge.tls import TlsTerminator


class FakeIssuer:
    """Stands in for AcmeIssuer in unit tests: issues from a CA or fails on demand."""

    def __init__(self, ca: InternalCA) -> None:
        self.ca = ca
        self.fail = False
        self.calls: list[str] = []

    def issue(self, domain: str) -> CertificateRecord:
        self.calls.append(domain)
        if self.fail:
            raise AcmeError("challenge failed: connection refused")
        return self.ca.issue(domain).evolve(source="acme")


def _manager(
    tmp_path: Path, store: LocalStore, *, mode: str, clock: Any = None
) -> tuple[CertificateManager, TlsTerminator, FakeIssuer, list[tuple[str, str]]]:
    ca = InternalCA.load_or_create(tmp_path / "ca")
    issuer = FakeIssuer(ca)
    tls = TlsTerminator()
    orders: list[tuple[str, str]] = []
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    manager = CertificateManager(
        store=store,
        tls=tls,
        mode=mode,  # type: ignore[arg-type]
        domains=lambda: ["a.test", "b.test"],
        holder="edge-1",
        internal_ca=ca,
        issuer=issuer,  # type: ignore[arg-type]
        on_order=lambda source, result: orders.append((source, result)),
        retry_base=60,
        **kwargs,
    )
    return manager, tls, issuer, orders


async def test_internal_mode_issues_every_domain_once(tmp_path: Path) -> None:
    store = LocalStore()
    manager, tls, _, orders = _manager(tmp_path, store, mode="internal")
    await manager.sync_once()
    await manager.sync_once()
    assert tls.has_certificate("a.test") and tls.has_certificate("b.test")
    assert orders == [("internal", "issued"), ("internal", "issued")]


async def test_acme_failure_backs_off_then_retries(tmp_path: Path) -> None:
    store = LocalStore()
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    manager, tls, issuer, orders = _manager(tmp_path, store, mode="acme", clock=lambda: now[0])
    issuer.fail = True
    await manager.sync_once()
    record = await store.get("a.test")
    assert record is not None and record.status == "failed" and record.attempts == 1
    assert "connection refused" in (record.last_error or "")
    assert orders.count(("acme", "failed")) == 2
    await manager.sync_once()  # within the back-off: nothing ordered
    assert issuer.calls == ["a.test", "b.test"]
    issuer.fail = False
    now[0] += timedelta(seconds=61)
    await manager.sync_once()
    assert tls.has_certificate("a.test")
    record = await store.get("a.test")
    assert record is not None and record.status == "issued"
    # the lease was released after each order
    assert await store.acquire_lease("a.test", "someone-else", 60)


async def test_lease_held_elsewhere_means_no_order(tmp_path: Path) -> None:
    store = LocalStore()
    manager, _, issuer, _ = _manager(tmp_path, store, mode="acme")
    await store.acquire_lease("a.test", "edge-2", 300)
    await store.acquire_lease("b.test", "edge-2", 300)
    await manager.sync_once()
    assert issuer.calls == []


async def test_certificates_ordered_elsewhere_are_served(tmp_path: Path) -> None:
    store = LocalStore()
    ca = InternalCA.load_or_create(tmp_path / "other-ca")
    await store.put(ca.issue("c.test"))
    await store.put(CertificateRecord(domain="d.test", status="failed"))
    await store.put(
        CertificateRecord(domain="e.test", status="issued", cert_pem="garbage", key_pem="x")
    )
    manager, tls, _, _ = _manager(tmp_path, store, mode="static")
    await manager.sync_once()
    assert tls.has_certificate("c.test")
    assert not tls.has_certificate("d.test") and not tls.has_certificate("e.test")


def test_fake_issuer_matches_the_real_signature() -> None:
    assert FakeIssuer.issue.__code__.co_varnames[:2] == AcmeIssuer.issue.__code__.co_varnames[:2]


async def test_order_rechecks_the_store_under_the_lease(tmp_path: Path) -> None:
    store = LocalStore()
    manager, tls, issuer, orders = _manager(tmp_path, store, mode="acme")
    # another edge finished the order after this edge listed the store
    other = InternalCA.load_or_create(tmp_path / "other").issue("a.test")
    await store.put(other)
    await manager._order("a.test", None)
    assert issuer.calls == [] and orders == []
    assert tls.has_certificate("a.test")


async def test_internal_mode_adopts_the_shared_ca_later_and_reissues(tmp_path: Path) -> None:
    """The operator was unreachable at start: the edge issued with its own CA. Once the
    shared CA can be had, it is adopted and what the own CA signed is issued again."""
    from zeitwork.core.errors import ServiceUnavailable

    store = LocalStore()
    own = InternalCA.load_or_create(tmp_path / "own")
    shared = InternalCA.load_or_create(tmp_path / "shared")
    reachable = [False]

    async def share() -> InternalCA:
        if not reachable[0]:
            raise ServiceUnavailable("operator is unreachable")
        return shared

    orders: list[tuple[str, str]] = []
    manager = CertificateManager(
        store=store,
        tls=TlsTerminator(),
        mode="internal",
        domains=lambda: ["a.test"],
        holder="edge-1",
        internal_ca=own,
        share_ca=share,
        on_order=lambda source, result: orders.append((source, result)),
    )
    await manager.sync_once()
    first = await store.get("a.test")
    assert first is not None and first.cert_pem is not None and own.issued(first.cert_pem)
    await manager.sync_once()  # still unreachable: nothing new
    assert orders == [("internal", "issued")]
    reachable[0] = True
    await manager.sync_once()
    second = await store.get("a.test")
    assert second is not None and second.cert_pem is not None
    assert shared.issued(second.cert_pem) and not own.issued(second.cert_pem)
    await manager.sync_once()  # the shared CA's certificate is not due: nothing more
    assert orders == [("internal", "issued"), ("internal", "issued")]


async def test_internal_mode_reissues_what_another_ca_signed(tmp_path: Path) -> None:
    store = LocalStore()
    other = InternalCA.load_or_create(tmp_path / "other")
    await store.put(other.issue("a.test"))  # valid for 90 days: not due by its dates
    manager, tls, _, orders = _manager(tmp_path, store, mode="internal")
    await manager.sync_once()
    record = await store.get("a.test")
    assert record is not None and record.cert_pem is not None
    assert not other.issued(record.cert_pem)
    assert ("internal", "issued") in orders and tls.has_certificate("a.test")
