"""Certificates (PEM validated, key must match, dates read from the certificate), leases
(one holder at a time, expiry, release) and the ACME account, with the request bodies the
edge's client (``zeitwork.clients.certificates``) sends."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import assert_problem, ready_node
from zeitwork.operator.principal import Scope

API = "/api/v1/certificates"


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def self_signed(host: str) -> tuple[str, str, datetime]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    not_after = datetime(2030, 1, 1, tzinfo=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem(key), not_after


async def test_put_list_and_validation(operator: Operator) -> None:
    proxy = operator.headers(await operator.token(Scope.PROXY))
    cert, key, not_after = self_signed("shop.example.com")
    r = await operator.client.put(
        f"{API}/shop.example.com",
        headers=proxy,
        json={"cert_pem": cert, "key_pem": key, "status": "issued", "source": "acme"},
    )
    assert r.status_code == 200, r.text
    stored = datetime.fromisoformat(r.json()["not_after"].replace("Z", "+00:00"))
    assert stored == not_after
    # pending records without material (what the edge writes before issuing)
    r = await operator.client.put(
        f"{API}/other.example.com",
        headers=proxy,
        json={
            "cert_pem": "",
            "key_pem": "",
            "status": "pending",
            "source": "acme",
            "last_error": "rate limited",
            "attempts": 2,
            "next_attempt_at": "2030-01-01T00:00:00+00:00",
        },
    )
    assert r.status_code == 200, r.text
    listed = (await operator.client.get(API, headers=proxy)).json()
    assert [c["domain"] for c in listed] == ["other.example.com", "shop.example.com"]
    assert listed[1]["key_pem"] == key and listed[1]["status"] == "issued"
    assert listed[0]["attempts"] == 2 and listed[0]["cert_pem"] is None

    _other_cert, other_key, _ = self_signed("x")
    bad = [
        {"cert_pem": cert, "key_pem": other_key, "status": "issued"},  # mismatch
        {"cert_pem": "garbage", "key_pem": key, "status": "issued"},
        {"cert_pem": cert, "key_pem": "garbage", "status": "issued"},
        {"cert_pem": cert, "status": "issued"},  # no key
        {"status": "revoked"},
        {"attempts": -1},
        {"unknown": 1},
    ]
    for body in bad:
        r = await operator.client.put(f"{API}/shop.example.com", headers=proxy, json=body)
        assert_problem(r, 422)
    r = await operator.client.put(f"{API}/not_a_host", headers=proxy, json={})
    assert_problem(r, 422)
    # the stored record did not change
    listed = (await operator.client.get(API, headers=proxy)).json()
    assert listed[1]["key_pem"] == key
    _node, node_token = await ready_node(operator)
    assert_problem(await operator.client.get(API, headers=operator.headers(node_token)), 403)
    assert_problem(await operator.client.get(API), 401)


async def test_leases(operator: Operator) -> None:
    proxy = operator.headers(await operator.token(Scope.PROXY))
    url = f"{API}/shop.example.com/lease"
    r = await operator.client.post(url, headers=proxy, json={"holder": "edge-a", "ttl_seconds": 60})
    assert r.status_code == 200 and r.json()["holder"] == "edge-a"
    r = await operator.client.post(url, headers=proxy, json={"holder": "edge-b", "ttl_seconds": 60})
    assert assert_problem(r, 409)["holder"] == "edge-a"
    r = await operator.client.post(url, headers=proxy, json={"holder": "edge-a", "ttl_seconds": 60})
    assert r.status_code == 200  # renewal
    assert_problem(await operator.client.delete(f"{url}?holder=edge-b", headers=proxy), 404)
    assert (await operator.client.delete(f"{url}?holder=edge-a", headers=proxy)).status_code == 204
    r = await operator.client.post(url, headers=proxy, json={"holder": "edge-b", "ttl_seconds": 1})
    assert r.status_code == 200
    await operator.sql("UPDATE certificate_leases SET expires_at = now() - interval '1 second'")
    r = await operator.client.post(url, headers=proxy, json={"holder": "edge-a", "ttl_seconds": 60})
    assert r.status_code == 200 and r.json()["holder"] == "edge-a"  # expired: taken over
    r = await operator.client.post(
        url, headers=proxy, json={"holder": "edge-a", "ttl_seconds": 601}
    )
    assert_problem(r, 422)

    # racing edges: exactly one wins a free lease
    async def take(holder: str) -> int:
        r = await operator.client.post(
            f"{API}/race.example.com/lease",
            headers=proxy,
            json={"holder": holder, "ttl_seconds": 60},
        )
        return r.status_code

    codes = await asyncio.gather(*(take(f"edge-{i}") for i in range(8)))
    assert sorted(codes) == [200] + [409] * 7


async def test_acme_account(operator: Operator) -> None:
    proxy = operator.headers(await operator.token(Scope.PROXY))
    directory = "https://acme.example/dir"
    url = "/api/v1/acme/account"
    assert_problem(
        await operator.client.get(url, headers=proxy, params={"directory": directory}), 404
    )
    key = key_pem(ec.generate_private_key(ec.SECP256R1()))
    body = {"directory": directory, "key_pem": key, "account_url": "https://acme.example/acct/1"}
    assert (await operator.client.put(url, headers=proxy, json=body)).status_code == 200
    r = await operator.client.get(url, headers=proxy, params={"directory": directory})
    assert r.json() == body
    body["account_url"] = "https://acme.example/acct/2"
    assert (await operator.client.put(url, headers=proxy, json=body)).status_code == 200
    r = await operator.client.get(url, headers=proxy, params={"directory": directory})
    assert r.json()["account_url"].endswith("/2")
    r = await operator.client.put(url, headers=proxy, json={**body, "key_pem": "nope"})
    assert_problem(r, 422)
    assert_problem(await operator.client.get(url, headers=proxy), 422)


async def test_internal_ca_first_offer_wins(operator: Operator) -> None:
    from zeitwork.edge.certificates.x509 import issue_leaf, self_signed_ca

    proxy = operator.headers(await operator.token(Scope.PROXY))
    url = "/api/v1/internal-ca"
    assert_problem(await operator.client.get(url, headers=proxy), 404)
    offers = [self_signed_ca(f"edge {i} CA") for i in range(6)]
    # edges starting together: every one gets the same CA, one of the offers
    answers = await asyncio.gather(
        *(
            operator.client.post(url, headers=proxy, json={"cert_pem": c, "key_pem": k})
            for c, k in offers
        )
    )
    assert {r.status_code for r in answers} == {200}
    winners = {(r.json()["cert_pem"], r.json()["key_pem"]) for r in answers}
    assert len(winners) == 1 and winners <= set(offers)
    ((cert, _),) = winners
    # later offers change nothing; the certificate alone is readable for clients to trust
    late = self_signed_ca("late CA")
    r = await operator.client.post(
        url, headers=proxy, json=dict(zip(("cert_pem", "key_pem"), late, strict=True))
    )
    assert r.json()["cert_pem"] == cert
    r = await operator.client.get(url, headers=proxy)
    assert r.status_code == 200 and r.json() == {"cert_pem": cert}
    # what is not a CA with its key is refused
    leaf, leaf_key = issue_leaf(["a.test"], ca_cert_pem=late[0], ca_key_pem=late[1])
    other_key = self_signed_ca("other")[1]
    for body in (
        {"cert_pem": "nope", "key_pem": late[1]},
        {
            "cert_pem": leaf.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n",
            "key_pem": leaf_key,
        },
        {"cert_pem": late[0], "key_pem": other_key},
        {"cert_pem": late[0], "key_pem": "nope"},
        {"cert_pem": late[0] + late[0], "key_pem": late[1]},
        {"cert_pem": late[0]},
    ):
        assert_problem(await operator.client.post(url, headers=proxy, json=body), 422)
    # other scopes may not read it
    join = operator.headers(await operator.token(Scope.JOIN))
    assert (await operator.client.get(url, headers=join)).status_code == 403
