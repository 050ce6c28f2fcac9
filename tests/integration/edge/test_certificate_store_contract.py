"""The ``EdgeCertificateStore`` contract, run against the local store and against the operator's
endpoints through ``CertificateClient`` (a real operator app on real PostgreSQL, over HTTP)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from zeitwork.clients.certificates import AcmeAccountRecord, CertificateClient, CertificateRecord
from zeitwork.edge.certificates.internal_ca import InternalCA
from zeitwork.edge.certificates.store import EdgeCertificateStore, LocalStore
from zeitwork.edge.certificates.x509 import key_pem, new_key, self_signed_ca

HAS_OPERATOR = importlib.util.find_spec("zeitwork.operator.api.certificates") is not None


async def _operator_store(database_url: str, tmp_path: Path) -> AsyncIterator[CertificateClient]:
    import uvicorn

    from zeitwork.core.clock import FakeClock
    from zeitwork.observability import new_registry
    from zeitwork.operator.app import create_app
    from zeitwork.operator.db.database import Database
    from zeitwork.operator.deps import build_deps
    from zeitwork.operator.principal import Scope
    from zeitwork.operator.settings import OperatorSettings

    try:
        settings = OperatorSettings(
            database_url=database_url,
            data_dir=tmp_path,
            admin_token="zw_edge-contract-admin-token-0123456789abcdef",
            db_timeout=2.0,
            db_pool_min=1,
            db_pool_max=4,
        )
        db = Database(url=database_url, min_size=1, max_size=4, timeout=2.0)
    except (TypeError, ValueError) as exc:  # the operator's construction API moved on
        pytest.skip(f"cannot build the operator for the contract test: {exc}")
    await db.open(wait=True, wait_seconds=10)
    deps = build_deps(settings=settings, db=db, clock=FakeClock(), stopping=asyncio.Event())
    _, token = await deps.token_service.issue(Scope.PROXY, name="edge contract test")
    app = create_app(deps=deps, registry=new_registry())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        client = CertificateClient(base_url=f"http://127.0.0.1:{port}", token=token)
        yield client
        await client.aclose()
    finally:
        server.should_exit = True
        await task
        await deps.listener.close()
        await db.close()


@pytest.fixture(params=["local", "operator"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[EdgeCertificateStore]:
    if request.param == "local":
        yield LocalStore(directory=tmp_path / "store")
        return
    if not HAS_OPERATOR:
        pytest.skip("the operator's certificate endpoints are not in this tree yet")
    database: str = request.getfixturevalue("migrated_database")
    async for client in _operator_store(database, tmp_path):
        yield client


def _same(a: CertificateRecord | None, b: CertificateRecord) -> None:
    assert a is not None
    for field in ("domain", "cert_pem", "key_pem", "status", "source", "last_error", "attempts"):
        assert getattr(a, field) == getattr(b, field), field


async def test_certificate_store_contract(store: EdgeCertificateStore, tmp_path: Path) -> None:
    ca = InternalCA.load_or_create(tmp_path / "ca")
    assert await store.get("app.test") is None
    # a pending record without material, then a failure with back-off, then the certificate
    pending = CertificateRecord(domain="app.test", status="pending", source="acme")
    await store.put(pending)
    _same(await store.get("app.test"), pending)
    retry_at = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    failed = pending.evolve(
        status="failed", last_error="challenge failed", attempts=2, next_attempt_at=retry_at
    )
    await store.put(failed)
    got = await store.get("app.test")
    _same(got, failed)
    assert got is not None and got.next_attempt_at == retry_at
    issued = ca.issue("app.test").evolve(source="acme")
    await store.put(issued)
    got = await store.get("app.test")
    _same(got, issued)
    assert got is not None and got.not_after is not None
    assert abs((got.not_after - (issued.not_after or got.not_after)).total_seconds()) < 1
    assert [r.domain for r in await store.list()] == ["app.test"]

    # leases: one holder at a time, renewable by its holder, released explicitly
    assert await store.acquire_lease("app.test", "edge-1", 60)
    assert await store.acquire_lease("app.test", "edge-1", 60)
    assert not await store.acquire_lease("app.test", "edge-2", 60)
    await store.release_lease("app.test", "edge-2")  # not the holder: no effect, no error
    assert not await store.acquire_lease("app.test", "edge-2", 60)
    await store.release_lease("app.test", "edge-1")
    assert await store.acquire_lease("app.test", "edge-2", 60)

    # the ACME account, per directory
    directory = "https://acme.example/directory"
    assert await store.get_account(directory) is None
    account = AcmeAccountRecord(
        directory=directory, key_pem=key_pem(new_key()), account_url="https://acme.example/acct/7"
    )
    await store.put_account(account)
    assert await store.get_account(directory) == account

    # the internal CA: a shared store keeps the first offer, the local store is one edge's
    first, second = self_signed_ca("edge 1 CA"), self_signed_ca("edge 2 CA")
    assert await store.offer_internal_ca(*first) == first
    kept = await store.offer_internal_ca(*second)
    assert kept == (first if isinstance(store, CertificateClient) else second)


async def test_edges_share_the_internal_ca_through_the_store(
    migrated_database: str, tmp_path: Path
) -> None:
    """Two edges' data directories, one operator: the second edge gives up its own CA for the
    first one's (files replaced), and what either issues chains to that CA."""
    if not HAS_OPERATOR:
        pytest.skip("the operator's certificate endpoints are not in this tree yet")
    async for client in _operator_store(migrated_database, tmp_path):
        one = await InternalCA.shared(tmp_path / "edge-1" / "ca", client)
        own = InternalCA.load_or_create(tmp_path / "edge-2" / "ca")
        assert own.cert_pem != one.cert_pem
        two = await InternalCA.shared(tmp_path / "edge-2" / "ca", client)
        assert two.cert_pem == one.cert_pem
        assert (tmp_path / "edge-2" / "ca" / "ca.crt").read_text() == one.cert_pem
        assert (tmp_path / "edge-2" / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
        chain = two.issue("b.test").cert_pem
        from cryptography import x509

        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        ca_cert = x509.load_pem_x509_certificate(one.cert_pem.encode())
        leaf.verify_directly_issued_by(ca_cert)  # raises if not signed by the shared CA
