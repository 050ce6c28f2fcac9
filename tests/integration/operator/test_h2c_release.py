"""A release's ``backend_protocol`` (migration 0015): kept on the release, inherited by the next
deploy, copied by a config change, and given to each of its instances in the route table."""

from __future__ import annotations

from tests.integration.operator.conftest import Operator
from tests.integration.operator.releases_kit import bind, platform


async def test_backend_protocol_reaches_the_route_table_and_is_inherited(
    operator: Operator,
) -> None:
    p = await platform(operator)
    v1 = await p.deploy(replicas=2, backend_protocol="h2c")
    assert v1["backend_protocol"] == "h2c"
    await bind(p, "grpc.example.com")

    async def current(version: int) -> bool:
        return (await p.release(version))["state"] == "active"

    await p.converge(lambda: current(1))
    table = await p.routes()
    (route,) = [r for r in table.routes if r.host == "grpc.example.com"]
    assert len(route.backends) == 2
    assert {b.protocol for b in route.backends} == {"h2c"}
    assert {b.protocol for b in table.default_backends} == {"h2c"}

    v2 = await p.deploy(env={"EXTRA": "1"})  # not named: the current release's
    assert v2["backend_protocol"] == "h2c"
    r = await operator.client.patch(
        f"/api/v1/projects/{p.project['slug']}/env",
        headers=operator.headers(),
        json={"set": {"MORE": "2"}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["backend_protocol"] == "h2c"

    v4 = await p.deploy(backend_protocol="http1")
    assert v4["backend_protocol"] == "http1"
    await p.converge(lambda: current(4), host="grpc.example.com")
    table = await p.routes()
    (route,) = [r for r in table.routes if r.host == "grpc.example.com"]
    assert {b.protocol for b in route.backends} == {"http1"}


async def test_unknown_backend_protocol_is_a_422(operator: Operator) -> None:
    p = await platform(operator)
    for bad in ("h3", "HTTP1", "", 2):
        r = await operator.client.post(
            f"/api/v1/projects/{p.project['slug']}/releases",
            headers=operator.headers(),
            json={"image": p.image, "backend_protocol": bad},
        )
        assert r.status_code == 422, (bad, r.text)
    fresh = await p.deploy()
    assert fresh["backend_protocol"] == "http1"  # the default
