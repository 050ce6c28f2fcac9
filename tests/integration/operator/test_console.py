"""The web console over HTTP on a real operator and PostgreSQL (no browser): sign-in and its
cookie, pages, CSRF and origin checks on every form, the cookie authenticating the API's
GETs but no state-changing request, and the API's refusals shown on the page."""

from __future__ import annotations

import re

import httpx

from tests.integration.operator.conftest import Operator
from tests.integration.operator.releases_kit import bind, platform
from zeitwork.operator.console.session import COOKIE_NAME, decode
from zeitwork.operator.principal import Scope

FORM = {"content-type": "application/x-www-form-urlencoded"}


async def _sign_in(op: Operator, token: str | None = None) -> httpx.Response:
    return await op.client.post(
        "/sign-in", content=f"token={token or op.admin_token}", headers=FORM
    )


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def test_pages_need_a_session(operator: Operator) -> None:
    for path in ("/", "/nodes", "/apps/shop"):
        r = await operator.client.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/sign-in", (path, r.text)
        assert "set-cookie" not in r.headers  # nothing to forget
    r = await operator.client.get("/sign-in")
    assert r.status_code == 200
    assert '<label for="token">API token</label>' in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


async def test_sign_in_sets_a_strict_http_only_cookie_and_never_echoes_the_token(
    operator: Operator,
) -> None:
    r = await _sign_in(operator, "zw_not-a-real-token-but-shaped-like-one-0000000")
    assert r.status_code == 401
    assert "unknown, expired or revoked" in r.text
    assert "zw_not-a-real-token" not in r.text
    assert "set-cookie" not in r.headers

    node_token = await operator.token(Scope.PROXY)
    r = await _sign_in(operator, node_token)
    assert r.status_code == 401 and "needs scope admin" in r.text

    r = await _sign_in(operator)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure over HTTPS (unit-tested)
    assert operator.admin_token not in cookie  # encoded, and never in a URL or a page
    session = decode(operator.client.cookies[COOKIE_NAME])
    assert session is not None and session.token == operator.admin_token

    page = await operator.client.get("/")
    assert page.status_code == 200 and "<h1>Apps</h1>" in page.text
    assert "No apps yet" in page.text
    r = await operator.client.post(
        "/api/v1/projects", headers=operator.headers(), json={"name": "Empty <b>"}
    )
    assert r.status_code == 201, r.text
    page = await operator.client.get("/")
    assert page.status_code == 200 and "Empty &lt;b&gt;" in page.text
    assert '<th scope="row">Empty &lt;b&gt;</th><td colspan="4">not deployed' in page.text
    assert operator.admin_token not in page.text
    assert page.headers["cache-control"] == "no-store"


async def test_forms_need_the_sessions_csrf_token_and_its_origin(operator: Operator) -> None:
    await _sign_in(operator)
    page = (await operator.client.get("/nodes")).text
    token = _csrf(page)
    for body, headers in (
        ("", FORM),
        ("csrf=forged", FORM),
        (f"csrf={token}", FORM | {"origin": "https://evil.example"}),
        (f"csrf={token}", {"content-type": "text/plain"}),
    ):
        r = await operator.client.post("/sign-out", content=body, headers=headers)
        assert r.status_code in (400, 403), (body, headers, r.status_code)
        assert COOKIE_NAME in operator.client.cookies
    r = await operator.client.post(
        "/sign-out", content=f"csrf={token}", headers=FORM | {"origin": "http://operator.test"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/sign-in"
    forget = r.headers["set-cookie"]
    assert "Max-Age=0" in forget and "HttpOnly" in forget and "SameSite=strict" in forget
    assert COOKIE_NAME not in operator.client.cookies
    # a new sign-in is a new session with another CSRF token
    await _sign_in(operator)
    assert _csrf((await operator.client.get("/nodes")).text) != token


async def test_the_cookie_authenticates_api_gets_but_nothing_that_changes_state(
    operator: Operator,
) -> None:
    assert (await operator.client.get("/api/v1/nodes")).status_code == 401
    await _sign_in(operator)
    assert (await operator.client.get("/api/v1/nodes")).status_code == 200
    r = await operator.client.post("/api/v1/projects", json={"name": "Sneaky"})
    assert r.status_code == 401, r.text


async def test_an_app_page_its_actions_and_the_apis_refusals(operator: Operator) -> None:
    p = await platform(operator)
    await bind(p, "shop.example.com")
    await p.deploy(replicas=2)
    await p.converge(lambda: _current(p, 1))
    await p.deploy(replicas=2, description="second")
    await p.converge(lambda: _current(p, 2))
    slug = p.project["slug"]
    await _sign_in(operator)

    apps = await operator.client.get("/")
    assert p.project["name"] in apps.text and "2/2 healthy" in apps.text
    page = await operator.client.get(f"/apps/{slug}")
    assert page.status_code == 200
    text = page.text
    assert "shop.example.com" in text and 'data-version="2"' in text
    assert "tcp :8080 open" in text  # an instance's last check
    assert f"/api/v1/events?project={slug}" in text
    token = _csrf(text)

    r = await operator.client.post(
        f"/apps/{slug}/rollback", content=f"csrf={token}&version=1", headers=FORM
    )
    assert r.status_code == 303 and r.headers["location"] == f"/apps/{slug}?done=rollback"
    page = await operator.client.get(r.headers["location"])
    assert 'data-version="3"' in page.text and "Rollback started" in page.text

    r = await operator.client.post(
        f"/apps/{slug}/deploy", content=f"csrf={token}&image=no-such-image", headers=FORM
    )
    assert r.status_code == 422 and 'role="alert"' in r.text, r.text
    assert "no-such-image" in r.text  # the API's problem, said on the page
    for bad in ("lots", "%C2%B2", "-1", "10000"):  # "²" too: a digit to str.isdigit
        r = await operator.client.post(
            f"/apps/{slug}/scale", content=f"csrf={token}&replicas={bad}", headers=FORM
        )
        assert r.status_code == 422 and "whole number" in r.text, bad
    r = await operator.client.post(
        f"/apps/{slug}/rollback", content=f"csrf={token}&version=0", headers=FORM
    )
    assert r.status_code == 422 and "a number like 3" in r.text
    r = await operator.client.post(
        f"/apps/{slug}/scale", content=f"csrf={token}&replicas=3", headers=FORM
    )
    assert r.status_code == 303
    status = await p.status()
    assert status["replicas"] == 3

    nodes = await operator.client.get("/nodes")
    assert nodes.status_code == 200 and "Drain" in nodes.text
    node_id = p.agents[0].node_id
    r = await operator.client.post(f"/nodes/{node_id}/drain", content=f"csrf={token}", headers=FORM)
    assert r.status_code == 303, r.text
    r = await operator.client.get("/api/v1/nodes/" + node_id, headers=operator.headers())
    assert r.json()["state"] == "draining"
    r = await operator.client.post(
        "/nodes/00000000-0000-0000-0000-000000000000/drain", content=f"csrf={token}", headers=FORM
    )
    assert r.status_code == 404 and 'role="alert"' in r.text

    missing = await operator.client.get("/apps/no-such-app")
    assert missing.status_code == 404 and 'role="alert"' in missing.text


async def _current(p: object, version: int) -> bool:
    status = await p.status()  # type: ignore[attr-defined]
    current = status["current_release"]
    return bool(current and current["version"] == version and status["rollout"] is None)


async def test_over_https_the_cookie_is_secure(operator: Operator) -> None:
    app = operator.client._transport.app  # type: ignore[attr-defined]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://operator.test"
    ) as client:
        r = await client.post(
            "/sign-in",
            content=f"token={operator.admin_token}",
            headers=FORM | {"origin": "https://operator.test"},
        )
        assert r.status_code == 303
        assert "Secure" in r.headers["set-cookie"]
        # the origin of a plain-HTTP page is another origin
        r = await client.post(
            "/sign-in",
            content=f"token={operator.admin_token}",
            headers=FORM | {"origin": "http://operator.test"},
        )
        assert r.status_code == 403 and "set-cookie" not in r.headers
