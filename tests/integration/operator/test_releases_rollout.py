"""Releases end to end through the operator: deploys rolled out by the reconcile loop
with fake agents reporting state and health, the route table checked at every step."""

from __future__ import annotations

from tests.integration.operator.conftest import Operator
from tests.integration.operator.releases_kit import bind, platform


async def test_first_deploy_then_rolling_update_never_leaves_the_route_empty(
    operator: Operator,
) -> None:
    p = await platform(operator)
    v1 = await p.deploy(replicas=2)
    assert v1["version"] == 1 and v1["state"] == "deploying" and not v1["current"]
    assert v1["rollout"]["state"] == "running"
    await bind(p, "app.example.com")

    async def v1_current() -> bool:
        return (await p.release(1))["state"] == "active"

    await p.converge(v1_current)
    assert await p.backends("app.example.com") == [v1["id"]] * 2
    table = await p.routes()
    (route,) = [r for r in table.routes if r.host == "app.example.com"]
    assert route.release_id is not None and str(route.release_id) == v1["id"]
    assert route.health_check is not None and route.health_check.type == "tcp"

    v2 = await p.deploy()
    assert v2["version"] == 2 and v2["replicas"] == 2

    async def v2_current() -> bool:
        return (await p.release(2))["state"] == "active"

    seen = await p.converge(v2_current, host="app.example.com", min_backends=2)
    assert any(v2["id"] in step and v1["id"] in step for step in seen)  # side by side
    assert await p.backends("app.example.com") == [v2["id"]] * 2
    assert (await p.release(1))["state"] == "superseded"
    assert [v for v, *_ in await p.live()] == [2, 2]  # no v1 instance left running
    kinds = [
        r[0]
        for r in await operator.sql(
            "SELECT kind FROM events WHERE release_id = %s ORDER BY seq", (v2["id"],)
        )
    ]
    for kind in (
        "release.created",
        "rollout.started",
        "instance.placed",
        "instance.healthy",
        "instance.serving",
        "rollout.succeeded",
    ):
        assert kind in kinds, kinds
