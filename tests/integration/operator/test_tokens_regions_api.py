"""``/api/v1/tokens`` and ``/api/v1/regions``."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.operator.conftest import Operator

PROBLEM = "application/problem+json"


async def test_token_lifecycle(operator: Operator) -> None:
    h = operator.headers()
    r = await operator.client.post("/api/v1/tokens", headers=h, json={"scope": "join", "name": "a"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["token"].startswith("zw_")
    assert created["scope"] == "join"
    assert created["token"].startswith(created["prefix"])
    listed = (await operator.client.get("/api/v1/tokens", headers=h)).json()
    assert isinstance(listed, list)
    assert created["id"] in {t["id"] for t in listed}
    assert all("token" not in t for t in listed)  # secrets are shown once only
    one = await operator.client.get(f"/api/v1/tokens/{created['id']}", headers=h)
    assert one.status_code == 200
    assert "token" not in one.json()
    joins = (await operator.client.get("/api/v1/tokens?scope=join", headers=h)).json()
    assert [t["id"] for t in joins] == [created["id"]]
    r = await operator.client.delete(f"/api/v1/tokens/{created['id']}", headers=h)
    assert r.status_code == 204
    r = await operator.client.delete(f"/api/v1/tokens/{created['id']}", headers=h)
    assert r.status_code == 404
    listed = (await operator.client.get("/api/v1/tokens", headers=h)).json()
    assert created["id"] not in {t["id"] for t in listed}
    with_revoked = await operator.client.get("/api/v1/tokens?include_revoked=true", headers=h)
    revoked = [t for t in with_revoked.json() if t["id"] == created["id"]]
    assert revoked[0]["revoked_at"] is not None


async def test_proxy_token_and_node_token(operator: Operator) -> None:
    h = operator.headers()
    r = await operator.client.post("/api/v1/tokens", headers=h, json={"scope": "proxy"})
    assert r.status_code == 201
    node = await operator.client.post(
        "/api/v1/nodes",
        headers=h,
        json={"hostname": "n", "ip_address": "10.0.0.1", "resources": {"vcpu": 1, "memory": 512}},
    )
    node_id = node.json()["id"]
    r = await operator.client.post(
        "/api/v1/tokens", headers=h, json={"scope": "node", "node_id": node_id}
    )
    assert r.status_code == 201
    assert r.json()["node_id"] == node_id
    r = await operator.client.get(
        f"/api/v1/nodes/{node_id}", headers=operator.headers(r.json()["token"])
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"scope": "root"}, 422),
        ({}, 422),
        ({"scope": "admin", "name": "x" * 201}, 422),
        ({"scope": "admin", "extra": True}, 422),
        ({"scope": "node"}, 422),
        ({"scope": "join", "node_id": "00000000-0000-0000-0000-000000000001"}, 422),
        ({"scope": "node", "node_id": "00000000-0000-0000-0000-000000000001"}, 404),
        ({"scope": "node", "node_id": "zzz"}, 422),
    ],
)
async def test_bad_token_requests(operator: Operator, body: dict[str, Any], status: int) -> None:
    before = await operator.sql("SELECT count(*) FROM api_tokens")
    r = await operator.client.post("/api/v1/tokens", headers=operator.headers(), json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    assert await operator.sql("SELECT count(*) FROM api_tokens") == before


async def test_region_crud(operator: Operator) -> None:
    h = operator.headers()
    assert (await operator.client.get("/api/v1/regions", headers=h)).json() == []
    r = await operator.client.post(
        "/api/v1/regions", headers=h, json={"name": "Frankfurt", "code": "eu-central-1"}
    )
    assert r.status_code == 201, r.text
    region = r.json()
    dup = await operator.client.post(
        "/api/v1/regions", headers=h, json={"name": "Other", "code": "eu-central-1"}
    )
    assert dup.status_code == 409
    assert dup.headers["content-type"] == PROBLEM
    assert "already exists" in dup.json()["detail"]
    path = f"/api/v1/regions/{region['id']}"
    r = await operator.client.patch(path, headers=h, json={"country": "DE"})
    assert (r.status_code, r.json()["country"], r.json()["name"]) == (200, "DE", "Frankfurt")
    assert (await operator.client.get(path, headers=h)).json()["country"] == "DE"
    # a node in the region blocks deletion
    node = await operator.client.post(
        "/api/v1/nodes",
        headers=h,
        json={
            "hostname": "fra-1",
            "ip_address": "10.0.0.1",
            "region_id": region["id"],
            "resources": {"vcpu": 1, "memory": 512},
        },
    )
    assert node.status_code == 201
    assert node.json()["region_id"] == region["id"]
    assert (await operator.client.delete(path, headers=h)).status_code == 409
    assert (
        await operator.client.delete(f"/api/v1/nodes/{node.json()['id']}", headers=h)
    ).status_code == 204
    assert (await operator.client.delete(path, headers=h)).status_code == 204
    assert (await operator.client.get(path, headers=h)).status_code == 404
    assert (await operator.client.patch(path, headers=h, json={"name": "x"})).status_code == 404
    # the code is free again after deletion
    again = await operator.client.post(
        "/api/v1/regions", headers=h, json={"name": "Frankfurt", "code": "eu-central-1"}
    )
    assert again.status_code == 201


@pytest.mark.parametrize(
    "body",
    [{"name": "x", "code": "EU CENTRAL"}, {"name": "", "code": "eu"}, {"code": "eu"}],
)
async def test_bad_region_is_422(operator: Operator, body: dict[str, Any]) -> None:
    r = await operator.client.post("/api/v1/regions", headers=operator.headers(), json=body)
    assert r.status_code == 422


async def test_region_unknown_id(operator: Operator) -> None:
    r = await operator.client.get(f"/api/v1/regions/{uuid.uuid4()}", headers=operator.headers())
    assert r.status_code == 404


async def test_token_expiry(operator: Operator) -> None:
    h = operator.headers()
    r = await operator.client.post(
        "/api/v1/tokens", headers=h, json={"scope": "admin", "expires_in": 3600}
    )
    assert r.status_code == 201, r.text
    assert r.json()["expires_at"] is not None
    secret = r.json()["token"]
    assert (
        await operator.client.get("/api/v1/nodes", headers=operator.headers(secret))
    ).status_code == 200
    await operator.sql(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = %s",
        (r.json()["id"],),
    )
    operator.clock.advance(operator.deps.settings.token_cache_seconds + 0.1)
    r = await operator.client.get("/api/v1/nodes", headers=operator.headers(secret))
    assert r.status_code == 401
    too_short = await operator.client.post(
        "/api/v1/tokens", headers=h, json={"scope": "admin", "expires_in": 10}
    )
    assert too_short.status_code == 422
    forever = await operator.client.post("/api/v1/tokens", headers=h, json={"scope": "join"})
    assert forever.json()["expires_at"] is None
