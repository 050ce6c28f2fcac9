"""A release's per-route limits (migration 0017) on the real operator and PostgreSQL: taken by a
deploy, shown on the release, inherited by the next deploy, copied by a config change and a
rollback, cleared by 0, carried by the environment's routes in the route table; a value out
of range is a 422 that changes nothing."""

from __future__ import annotations

from typing import Any

from tests.integration.operator.conftest import Operator
from tests.integration.operator.releases_kit import Platform, bind, platform

HOST = "limits.example.com"


def limits_of(release: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (
        release["response_idle_timeout"],
        release["tunnel_idle_timeout"],
        release["max_tunnels"],
    )


async def route_limits(p: Platform) -> tuple[Any, Any, Any]:
    table = await p.routes()
    (route,) = [r for r in table.routes if r.host == HOST]
    return route.response_idle_timeout, route.tunnel_idle_timeout, route.max_tunnels


async def test_limits_reach_the_route_table_and_are_inherited(operator: Operator) -> None:
    p = await platform(operator)
    v1 = await p.deploy(response_idle_timeout=300, tunnel_idle_timeout=45.5, max_tunnels=2)
    assert limits_of(v1) == (300, 45.5, 2)
    assert limits_of(await p.release(1)) == (300, 45.5, 2)
    await bind(p, HOST)

    async def current(version: int) -> bool:
        return (await p.release(version))["state"] == "active"

    await p.converge(lambda: current(1))
    assert await route_limits(p) == (300, 45.5, 2)

    v2 = await p.deploy(env={"EXTRA": "1"})  # not named: the current release's
    assert limits_of(v2) == (300, 45.5, 2)
    r = await operator.client.patch(
        f"/api/v1/projects/{p.project['slug']}/env",
        headers=operator.headers(),
        json={"set": {"MORE": "2"}},
    )
    assert r.status_code == 201, r.text
    assert limits_of(r.json()) == (300, 45.5, 2)  # a config change keeps them

    v4 = await p.deploy(response_idle_timeout=0, max_tunnels=10)  # 0 clears, one changed
    assert limits_of(v4) == (None, 45.5, 10)
    await p.converge(lambda: current(4), host=HOST)
    assert await route_limits(p) == (None, 45.5, 10)

    r = await operator.client.post(
        f"/api/v1/projects/{p.project['slug']}/rollback",
        headers=operator.headers(),
        json={"version": 1},
    )
    assert r.status_code == 201, r.text
    assert limits_of(r.json()) == (300, 45.5, 2)  # a rollback brings back v1's


async def test_limits_out_of_range_are_a_422(operator: Operator) -> None:
    p = await platform(operator)
    bad: list[dict[str, Any]] = [
        {"response_idle_timeout": -1},
        {"response_idle_timeout": 0.5},
        {"response_idle_timeout": 86401},
        {"response_idle_timeout": "soon"},
        {"response_idle_timeout": "1\u0000"},
        {"tunnel_idle_timeout": 1e12},
        {"tunnel_idle_timeout": [3]},
        {"max_tunnels": -3},
        {"max_tunnels": 1.5},
        {"max_tunnels": 10_000_000},
        {"max_tunnels": "\u0000"},
    ]
    for fields in bad:
        r = await operator.client.post(
            f"/api/v1/projects/{p.project['slug']}/releases",
            headers=operator.headers(),
            json={"image": p.image, **fields},
        )
        assert r.status_code == 422, (fields, r.text)
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
    # NaN as JSON allows it (Python's parser reads the literal): refused too
    r = await operator.client.post(
        f"/api/v1/projects/{p.project['slug']}/releases",
        headers={**operator.headers(), "content-type": "application/json"},
        content=f'{{"image": "{p.image}", "response_idle_timeout": NaN}}',
    )
    assert r.status_code == 422, r.text
    fresh = await p.deploy()
    assert fresh["version"] == 1  # nothing refused was recorded
    assert limits_of(fresh) == (None, None, None)  # the default: the load balancers' own
