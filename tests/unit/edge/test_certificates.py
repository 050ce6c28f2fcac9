from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from zeitwork.clients.certificates import (
    AcmeAccountRecord,
    CertificateRecord,
    record_from_json,
    record_to_json,
)
from zeitwork.core.errors import InvalidInput
from zeitwork.edge.certificates.internal_ca import InternalCA
from zeitwork.edge.certificates.renewal import backoff, failed, is_due, renew_at
from zeitwork.edge.certificates.static import StaticFiles
from zeitwork.edge.certificates.store import EdgeCertificateStore, LocalStore
from zeitwork.edge.certificates.x509 import (
    CertificateError,
    inspect,
    issue_leaf,
    self_signed_ca,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _issued(days_left: float, lifetime_days: float = 90) -> CertificateRecord:
    not_after = NOW + timedelta(days=days_left)
    return CertificateRecord(
        domain="a.test",
        cert_pem="x",
        key_pem="y",
        status="issued",
        not_before=not_after - timedelta(days=lifetime_days),
        not_after=not_after,
    )


def test_renewal_at_two_thirds() -> None:
    assert is_due(None, NOW)
    assert not is_due(_issued(31), NOW)  # 59 of 90 days used
    assert is_due(_issued(29), NOW)  # 61 of 90 days used
    record = _issued(30)
    at = renew_at(record)
    assert at is not None and abs((at - NOW).total_seconds()) < 1
    assert is_due(CertificateRecord(domain="a", status="pending"), NOW)


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(n, base=10).total_seconds() for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff(100, base=60, cap=3600).total_seconds() == 3600
    assert backoff(0, base=5).total_seconds() == 5


def test_failed_keeps_old_certificate_and_schedules_retry() -> None:
    first = failed(None, "a.test", "boom", NOW, base=60)
    assert first.status == "failed" and first.attempts == 1 and first.last_error == "boom"
    assert first.next_attempt_at == NOW + timedelta(seconds=60)
    assert not is_due(first, NOW + timedelta(seconds=59))
    assert is_due(first, NOW + timedelta(seconds=61))
    second = failed(first, "a.test", "again", NOW, base=60)
    assert second.attempts == 2 and second.next_attempt_at == NOW + timedelta(seconds=120)
    renewing = failed(_issued(10), "a.test", "x" * 5000, NOW)
    assert renewing.status == "issued" and renewing.cert_pem == "x"
    assert renewing.last_error is not None and len(renewing.last_error) == 1000


def test_internal_ca_persists_and_issues(tmp_path: Path) -> None:
    ca = InternalCA.load_or_create(tmp_path / "ca")
    again = InternalCA.load_or_create(tmp_path / "ca")
    assert again.cert_pem == ca.cert_pem
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    record = ca.issue("app.test")
    assert record.status == "issued" and record.source == "internal"
    info = inspect(record.cert_pem, record.key_pem)
    assert info.names == ("app.test",)
    assert record.not_after is not None and record.not_after > datetime.now(UTC) + timedelta(
        days=80
    )


def test_internal_ca_is_made_anew_over_a_lone_key(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    directory.mkdir()
    (directory / "ca.key").write_text("written before a crash, no certificate beside it")
    ca = InternalCA.load_or_create(directory)
    assert (directory / "ca.key").read_text() != "written before a crash, no certificate beside it"
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert InternalCA.load_or_create(directory).cert_pem == ca.cert_pem
    assert sorted(p.name for p in directory.iterdir()) == ["ca.crt", "ca.key"]


def test_inspect_rejects_mismatch_and_garbage() -> None:
    ca, key = self_signed_ca("t")
    chain1, key1 = issue_leaf(["a.test"], ca_cert_pem=ca, ca_key_pem=key)
    _, key2 = issue_leaf(["a.test"], ca_cert_pem=ca, ca_key_pem=key, key_kind="rsa")
    assert inspect(chain1, key1).names == ("a.test",)
    with pytest.raises(CertificateError, match="does not match"):
        inspect(chain1, key2)
    with pytest.raises(CertificateError):
        inspect("not a cert")
    with pytest.raises(CertificateError):
        inspect(chain1, "not a key")


def test_static_files_poll_and_accept(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    files = StaticFiles(cert_path=cert, key_path=key)
    assert files.poll() is None  # missing files
    cert.write_text("C1")
    key.write_text("K1")
    polled = files.poll()
    assert polled is not None and polled[1:] == ("C1", "K1")
    assert files.poll() is not None  # not accepted yet: offered again
    files.accept(polled[0])
    assert files.poll() is None
    cert.write_text("C2-longer")
    polled = files.poll()
    assert polled is not None and polled[1] == "C2-longer"


def test_record_json_round_trip() -> None:
    record = _issued(10).evolve(last_error="e", attempts=2, next_attempt_at=NOW)
    assert record_from_json(record_to_json(record)) == record
    parsed = record_from_json({"domain": "a.test", "not_after": "2026-01-01T00:00:00Z"})
    assert parsed.not_after == NOW and parsed.status == "pending"
    with pytest.raises(InvalidInput):
        record_from_json({"no": "domain"})


# -- EdgeCertificateStore contract, run against every local implementation ------------------------


@pytest.fixture(params=["memory", "directory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> EdgeCertificateStore:
    return LocalStore(directory=tmp_path / "store" if request.param == "directory" else None)


async def test_store_contract(store: EdgeCertificateStore) -> None:
    assert await store.list() == []
    assert await store.get("a.test") is None
    record = _issued(10)
    await store.put(record)
    assert await store.get("a.test") == record
    await store.put(record.evolve(status="failed", attempts=1))
    got = await store.get("a.test")
    assert got is not None and got.status == "failed" and got.attempts == 1
    assert [r.domain for r in await store.list()] == ["a.test"]
    # leases: one holder at a time, re-entrant for the same holder, released explicitly
    assert await store.acquire_lease("a.test", "edge-1", 60)
    assert await store.acquire_lease("a.test", "edge-1", 60)
    assert not await store.acquire_lease("a.test", "edge-2", 60)
    await store.release_lease("a.test", "edge-2")  # not the holder: no effect
    assert not await store.acquire_lease("a.test", "edge-2", 60)
    await store.release_lease("a.test", "edge-1")
    assert await store.acquire_lease("a.test", "edge-2", 60)
    # ACME accounts per directory
    assert await store.get_account("https://ca/dir") is None
    account = AcmeAccountRecord(
        directory="https://ca/dir", key_pem="KEY", account_url="https://ca/acct/1"
    )
    await store.put_account(account)
    assert await store.get_account("https://ca/dir") == account


async def test_directory_store_survives_restart(tmp_path: Path) -> None:
    first = LocalStore(directory=tmp_path / "s")
    await first.put(_issued(10))
    await first.put_account(AcmeAccountRecord(directory="d", key_pem="k", account_url="u"))
    second = LocalStore(directory=tmp_path / "s")
    assert await second.get("a.test") == _issued(10)
    assert await second.get_account("d") is not None
    names = sorted(path.name for path in (tmp_path / "s").iterdir())
    assert names == ["acme-accounts.json", "cert-a.test.json"]  # no temp file left
    for path in (tmp_path / "s").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_expired_lease_can_be_taken(tmp_path: Path) -> None:
    store = LocalStore()
    assert await store.acquire_lease("a.test", "edge-1", 0)
    assert await store.acquire_lease("a.test", "edge-2", 60)
