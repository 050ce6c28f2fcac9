"""Authentication: 401 without or with a bad token, 403 for a wrong scope, revocation,
the env admin token, the token cache, and the first-start admin token file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.integration.operator.conftest import ENV_ADMIN, Operator
from zeitwork.operator.principal import Scope

PROBLEM = "application/problem+json"


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "zw_sometoken", "Bearer zw_unknown"],
)
async def test_missing_or_bad_token_is_401(operator: Operator, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = await operator.client.get("/api/v1/nodes", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["status"] == 401


async def test_admin_token_and_env_admin_token_pass(operator: Operator) -> None:
    for token in (operator.admin_token, ENV_ADMIN):
        r = await operator.client.get("/api/v1/nodes", headers=operator.headers(token))
        assert r.status_code == 200, r.text
        assert r.json() == []


@pytest.mark.parametrize(
    ("scope", "method", "path"),
    [
        (Scope.JOIN, "GET", "/api/v1/nodes"),
        (Scope.JOIN, "GET", "/api/v1/tokens"),
        (Scope.PROXY, "POST", "/api/v1/tokens"),
        (Scope.PROXY, "GET", "/api/v1/regions"),
        (Scope.JOIN, "DELETE", "/api/v1/nodes/00000000-0000-0000-0000-000000000001"),
        (Scope.PROXY, "POST", "/api/v1/nodes"),
    ],
)
async def test_wrong_scope_is_403(operator: Operator, scope: Scope, method: str, path: str) -> None:
    token = await operator.token(scope)
    r = await operator.client.request(
        method, path, headers=operator.headers(token), json={"scope": "admin"}
    )
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["scope"] == scope.value


async def test_auth_comes_before_validation(operator: Operator) -> None:
    # an unauthenticated caller learns nothing about the body's shape
    r = await operator.client.post("/api/v1/tokens", json={"scope": "nonsense"})
    assert r.status_code == 401


async def test_revoked_token_is_refused_at_once(operator: Operator) -> None:
    created = await operator.client.post(
        "/api/v1/tokens", headers=operator.headers(), json={"scope": "admin", "name": "tmp"}
    )
    secret = created.json()["token"]
    assert (
        await operator.client.get("/api/v1/nodes", headers=operator.headers(secret))
    ).status_code == 200
    r = await operator.client.delete(
        f"/api/v1/tokens/{created.json()['id']}", headers=operator.headers()
    )
    assert r.status_code == 204
    r = await operator.client.get("/api/v1/nodes", headers=operator.headers(secret))
    assert r.status_code == 401


async def test_revocation_elsewhere_is_seen_after_the_cache_ttl(operator: Operator) -> None:
    token, secret = await operator.deps.token_service.issue(Scope.ADMIN)
    assert (
        await operator.client.get("/api/v1/nodes", headers=operator.headers(secret))
    ).status_code == 200
    # another operator process revokes it (this process's cache is not told)
    await operator.sql("UPDATE api_tokens SET deleted_at = now() WHERE id = %s", (token.id,))
    assert (
        await operator.client.get("/api/v1/nodes", headers=operator.headers(secret))
    ).status_code == 200
    operator.clock.advance(operator.deps.settings.token_cache_seconds + 0.1)
    assert (
        await operator.client.get("/api/v1/nodes", headers=operator.headers(secret))
    ).status_code == 401


async def test_tokens_are_stored_hashed(operator: Operator) -> None:
    _token, secret = await operator.deps.token_service.issue(Scope.JOIN)
    rows = await operator.sql("SELECT token_hash, prefix FROM api_tokens")
    assert all(secret not in (h, p) for h, p in rows)
    assert all(len(h) == 64 for h, _ in rows)


async def test_health_and_metrics_need_no_token(operator: Operator) -> None:
    assert (await operator.client.get("/health")).status_code == 200
    assert (await operator.client.get("/health/ready")).status_code == 200
    metrics = await operator.client.get("/metrics")
    assert metrics.status_code == 200
    assert 'zeitwork_nodes{state="ready"}' in metrics.text
    assert 'zeitwork_instances{state="running"}' in metrics.text
    assert 'zeitwork_images{status="ready"}' in metrics.text


async def test_first_start_writes_admin_token_file(operator: Operator, tmp_path: Path) -> None:
    await operator.sql("UPDATE api_tokens SET deleted_at = now()")  # no live admin token
    data_dir = tmp_path / "data"
    path = await operator.deps.token_service.ensure_admin_token(data_dir)
    assert path == data_dir / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_text().strip()
    r = await operator.client.get("/api/v1/tokens", headers=operator.headers(secret))
    assert r.status_code == 200
    # a second start finds the token and leaves the file alone
    assert await operator.deps.token_service.ensure_admin_token(data_dir) is None
    assert path.read_text().strip() == secret


async def test_openapi_declares_bearer_auth(operator: Operator) -> None:
    schema = (await operator.client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/v1/nodes"]["get"]["security"] == [{"bearer": []}]
    assert "/health" not in schema["paths"]
