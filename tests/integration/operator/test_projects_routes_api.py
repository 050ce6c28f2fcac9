"""Projects, domains, deployments (replicas spread, all or nothing) and the route table
(long-poll: bumps on binding and running-instance changes)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import allocated, assert_problem, ready_image, ready_node
from zeitwork.operator.principal import Scope
from zeitwork.wire.routes import RouteTable


async def project(op: Operator, name: str = "My Shop") -> dict[str, Any]:
    r = await op.client.post("/api/v1/projects", headers=op.headers(), json={"name": name})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def deploy(op: Operator, project_id: str, image: str, replicas: int) -> Any:
    return await op.client.post(
        "/api/v1/deployments",
        headers=op.headers(),
        json={
            "project_id": project_id,
            "image_id": image,
            "replicas": replicas,
            "resources": {"vcpu": 1, "memory": 512},
            "port": 8080,
            "env": {"GREETING": "hi"},
        },
    )


async def run(op: Operator, token: str, iid: str, ip: str) -> None:
    for state in ("starting", "running"):
        body: dict[str, Any] = {"state": state}
        if state == "running":
            body |= {"ip_address": ip, "port": 8080}
        r = await op.client.put(
            f"/api/v1/instances/{iid}/state", headers=op.headers(token), json=body
        )
        assert r.status_code == 200, r.text


async def test_projects_crud(operator: Operator) -> None:
    p = await project(operator)
    assert p["slug"] == "my-shop"
    h = operator.headers()
    assert (await operator.client.get(f"/api/v1/projects/{p['id']}", headers=h)).json() == p
    r = await operator.client.post("/api/v1/projects", headers=h, json={"name": "My  Shop!"})
    assert_problem(r, 409)  # same slug
    assert_problem(
        await operator.client.post("/api/v1/projects", headers=h, json={"name": ""}), 422
    )
    r = await operator.client.post(
        "/api/v1/projects", headers=h, json={"name": "x", "slug": "Bad Slug"}
    )
    assert_problem(r, 422)
    assert len((await operator.client.get("/api/v1/projects", headers=h)).json()) == 1
    assert (
        await operator.client.delete(f"/api/v1/projects/{p['id']}", headers=h)
    ).status_code == 204
    assert_problem(await operator.client.get(f"/api/v1/projects/{p['id']}", headers=h), 404)
    assert_problem(await operator.client.delete(f"/api/v1/projects/{p['id']}", headers=h), 404)
    proxy = await operator.token(Scope.PROXY)
    assert_problem(
        await operator.client.get("/api/v1/projects", headers=operator.headers(proxy)), 403
    )


async def test_deployment_spreads_replicas_and_routes_follow(operator: Operator) -> None:
    nodes = dict([await ready_node(operator) for _ in range(3)])
    image = await ready_image(operator)
    p = await project(operator)
    r = await deploy(operator, p["id"], image, 3)
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["state"] == "deploying"
    assert len(dep["instance_ids"]) == 3
    assert {i["node_id"] for i in dep["instances"]} == set(nodes)  # one per node
    assert dep["instances"][0]["environment_variable_names"] == ["GREETING"]
    h = operator.headers()
    got = (await operator.client.get(f"/api/v1/deployments/{dep['id']}", headers=h)).json()
    assert sorted(got["instance_ids"]) == sorted(dep["instance_ids"])
    listed = (
        await operator.client.get(f"/api/v1/deployments?project_id={p['id']}", headers=h)
    ).json()
    assert [d["id"] for d in listed] == [dep["id"]]
    r = await operator.client.get(f"/api/v1/instances?deployment_id={dep['id']}", headers=h)
    assert len(r.json()) == 3

    proxy = operator.headers(await operator.token(Scope.PROXY))
    table = RouteTable.model_validate(
        (await operator.client.get("/api/v1/routes", headers=proxy)).json()
    )
    assert table.routes == [] and table.default_backends == []

    r = await operator.client.post(
        "/api/v1/domains",
        headers=h,
        json={"name": "Shop.Example.com", "project_id": p["id"], "deployment_id": dep["id"]},
    )
    assert r.status_code == 201, r.text
    domain = r.json()
    assert domain["name"] == "shop.example.com"
    table2 = RouteTable.model_validate(
        (await operator.client.get("/api/v1/routes", headers=proxy)).json()
    )
    assert table2.version > table.version
    [route] = table2.routes
    assert (route.host, route.backends) == ("shop.example.com", [])

    # a long-poll wakes when an instance starts running
    waiter = asyncio.create_task(
        operator.client.get(f"/api/v1/routes?version={table2.version}&wait=20", headers=proxy)
    )
    await asyncio.sleep(0.3)
    first = dep["instances"][0]
    changed = time.monotonic()
    await run(operator, nodes[first["node_id"]], first["id"], "10.200.0.7")
    r = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - changed < 1.5
    table3 = RouteTable.model_validate(r.json())
    [route] = table3.routes
    assert [b.address for b in route.backends] == ["10.200.0.7:8080"]
    assert route.backends[0].instance_id == uuid.UUID(first["id"])
    assert [b.address for b in table3.default_backends] == ["10.200.0.7:8080"]

    # unbinding removes the route; deleting the instance removes the backend
    r = await operator.client.put(
        f"/api/v1/domains/{domain['id']}", headers=h, json={"deployment_id": None}
    )
    assert r.status_code == 200
    table4 = RouteTable.model_validate(
        (await operator.client.get("/api/v1/routes", headers=proxy)).json()
    )
    assert table4.routes == [] and table4.version > table3.version
    await operator.client.delete(f"/api/v1/instances/{first['id']}", headers=h)
    table5 = RouteTable.model_validate(
        (await operator.client.get("/api/v1/routes", headers=proxy)).json()
    )
    assert table5.default_backends == [] and table5.version > table4.version

    # the project cannot go while instances live
    assert_problem(await operator.client.delete(f"/api/v1/projects/{p['id']}", headers=h), 409)


async def test_deployment_is_all_or_nothing(operator: Operator) -> None:
    node, _ = await ready_node(operator, vcpu=2, memory=1024)
    image = await ready_image(operator)
    p = await project(operator)
    r = await deploy(operator, p["id"], image, 3)
    problem = assert_problem(r, 409)
    assert "short by" in problem["detail"]
    assert await allocated(operator, node) == (0, 0)
    assert await operator.sql("SELECT count(*) FROM deployments") == [(0,)]
    assert await operator.sql("SELECT count(*) FROM instances") == [(0,)]
    r = await deploy(operator, p["id"], image, 2)
    assert r.status_code == 201, r.text
    assert await allocated(operator, node) == (2000, 1024)
    assert_problem(await deploy(operator, str(uuid.uuid4()), image, 1), 404)
    assert_problem(await deploy(operator, p["id"], str(uuid.uuid4()), 1), 422)


async def test_domains_crud_and_errors(operator: Operator) -> None:
    p = await project(operator)
    h = operator.headers()
    body = {"name": "app.example.com", "project_id": p["id"]}
    r = await operator.client.post("/api/v1/domains", headers=h, json=body)
    assert r.status_code == 201
    d = r.json()
    assert d["verified"] is False and d["deployment_id"] is None
    assert_problem(await operator.client.post("/api/v1/domains", headers=h, json=body), 409)
    for bad in ("not a host", "-x.com", "a" * 300, "exa_mple.com"):
        r = await operator.client.post("/api/v1/domains", headers=h, json={**body, "name": bad})
        assert_problem(r, 422)
    r = await operator.client.post(
        "/api/v1/domains",
        headers=h,
        json={"name": "b.example.com", "project_id": str(uuid.uuid4())},
    )
    assert_problem(r, 404)
    r = await operator.client.put(
        f"/api/v1/domains/{d['id']}", headers=h, json={"deployment_id": str(uuid.uuid4())}
    )
    assert_problem(r, 422)
    proxy = operator.headers(await operator.token(Scope.PROXY))
    listed = (await operator.client.get("/api/v1/domains", headers=proxy)).json()
    assert [x["name"] for x in listed] == ["app.example.com"]
    assert_problem(await operator.client.post("/api/v1/domains", headers=proxy, json=body), 403)
    assert (
        await operator.client.delete(f"/api/v1/domains/{d['id']}", headers=h)
    ).status_code == 204
    assert_problem(await operator.client.get(f"/api/v1/domains/{d['id']}", headers=h), 404)
    # the name is free again
    assert (await operator.client.post("/api/v1/domains", headers=h, json=body)).status_code == 201


async def test_routes_need_proxy_or_admin_and_valid_params(operator: Operator) -> None:
    _node, token = await ready_node(operator)
    assert_problem(await operator.client.get("/api/v1/routes"), 401)
    assert_problem(
        await operator.client.get("/api/v1/routes", headers=operator.headers(token)), 403
    )
    r = await operator.client.get("/api/v1/routes?wait=100&version=0", headers=operator.headers())
    assert_problem(r, 422)
    # the node becoming ready bumped the version once (node state changes move the table)
    current = (await operator.client.get("/api/v1/routes", headers=operator.headers())).json()
    assert current["version"] == 1
    start = time.monotonic()
    r = await operator.client.get("/api/v1/routes?wait=1&version=1", headers=operator.headers())
    assert r.status_code == 200 and r.json()["version"] == 1
    assert 0.9 <= time.monotonic() - start < 3


async def test_concurrent_deployments_neither_deadlock_nor_over_commit(
    operator: Operator,
) -> None:
    nodes = [(await ready_node(operator, vcpu=4, memory=2048))[0] for _ in range(3)]
    image = await ready_image(operator)
    p = await project(operator)
    # 8 deployments x 3 replicas x (1 vCPU, 512 MiB) = 24 slots wanted, 12 exist
    results = await asyncio.gather(*(deploy(operator, p["id"], image, 3) for _ in range(8)))
    codes = sorted(r.status_code for r in results)
    assert codes == [201] * 4 + [409] * 4, [r.text for r in results]
    for r in results:
        if r.status_code == 201:
            assert {i["node_id"] for i in r.json()["instances"]} == set(nodes)  # spread
    for node in nodes:
        assert await allocated(operator, node) == (4000, 2048)


@dataclass
class RoutedDomain:
    """A domain bound to a one-instance deployment, with admin and proxy headers."""

    domain: dict[str, Any]
    admin: dict[str, str]
    proxy: dict[str, str]
    operator: Operator

    async def table(self) -> RouteTable:
        got = await self.operator.client.get("/api/v1/routes", headers=self.proxy)
        return RouteTable.model_validate(got.json())


async def routed_domain(operator: Operator, name: str) -> RoutedDomain:
    await ready_node(operator)
    image = await ready_image(operator)
    p = await project(operator)
    dep = (await deploy(operator, p["id"], image, 1)).json()
    h = operator.headers()
    r = await operator.client.post(
        "/api/v1/domains",
        headers=h,
        json={"name": name, "project_id": p["id"], "deployment_id": dep["id"]},
    )
    assert r.status_code == 201, r.text
    proxy = operator.headers(await operator.token(Scope.PROXY))
    return RoutedDomain(r.json(), h, proxy, operator)


async def test_domain_rate_limit_goes_out_in_the_route_table(operator: Operator) -> None:
    routed = await routed_domain(operator, "api.example.com")
    domain, h, proxy, table = routed.domain, routed.admin, routed.proxy, routed.table
    assert (domain["rate_limit_rps"], domain["rate_limit_burst"]) == (None, None)

    before = await table()
    url = f"/api/v1/domains/{domain['id']}/rate-limit"
    r = await operator.client.put(url, headers=h, json={"rate_limit_rps": 5, "rate_limit_burst": 7})
    assert r.status_code == 200, r.text
    assert (r.json()["rate_limit_rps"], r.json()["rate_limit_burst"]) == (5, 7)
    after = await table()
    assert after.version > before.version
    [route] = after.routes
    assert (route.rate_limit_rps, route.rate_limit_burst) == (5, 7)
    # the same values again do not move the table
    await operator.client.put(url, headers=h, json={"rate_limit_rps": 5, "rate_limit_burst": 7})
    assert (await table()).version == after.version
    # bad input: a problem each, nothing changed
    for bad in (
        {"rate_limit_rps": 0},
        {"rate_limit_rps": -1},
        {"rate_limit_rps": None, "rate_limit_burst": 3},
        {"rate_limit_rps": 5, "rate_limit_burst": 0},
        {"rate_limit_rps": 5, "extra": 1},
        {},
    ):
        assert_problem(await operator.client.put(url, headers=h, json=bad), 422)
    assert_problem(
        await operator.client.put(
            f"/api/v1/domains/{uuid.uuid4()}/rate-limit", headers=h, json={"rate_limit_rps": 1}
        ),
        404,
    )
    assert_problem(await operator.client.put(url, headers=proxy, json={"rate_limit_rps": 1}), 403)
    [route] = (await table()).routes
    assert (route.rate_limit_rps, route.rate_limit_burst) == (5, 7)
    # null goes back to the edge's global limit
    r = await operator.client.put(url, headers=h, json={"rate_limit_rps": None})
    assert r.status_code == 200
    [route] = (await table()).routes
    assert (route.rate_limit_rps, route.rate_limit_burst) == (None, None)


async def test_domain_edge_policy_goes_out_in_the_route_table(operator: Operator) -> None:
    routed = await routed_domain(operator, "web.example.com")
    domain, h, proxy, table = routed.domain, routed.admin, routed.proxy, routed.table

    before = await table()
    assert before.routes[0].policy is None
    url = f"/api/v1/domains/{domain['id']}/edge-policy"
    body = {
        "cors": {"origins": ["https://app.example.com"], "credentials": True},
        "headers": {"content_security_policy": "default-src 'self'", "frame_options": ""},
    }
    r = await operator.client.put(url, headers=h, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["edge_policy"]["cors"]["origins"] == ["https://app.example.com"]
    after = await table()
    assert after.version > before.version
    policy = after.routes[0].policy
    assert policy is not None and policy.cors is not None and policy.headers is not None
    assert policy.cors.credentials is True
    assert policy.headers.content_security_policy == "default-src 'self'"
    assert policy.headers.frame_options == ""  # switched off for this host
    # bad input: 422 each, the stored policy unchanged
    for bad in (
        {"cors": {"origins": "https://x"}},  # not a list
        {"cors": {"max_age": -1}},
        {"headers": {"hsts_max_age": -5}},
        {"rate_limit": {"rps": 1}},  # rate limits have their own endpoint
        {"unknown": {}},
        # what the edges would refuse is refused here
        {"headers": {"frame_options": "ALLOWALL"}},
        {"headers": {"content_security_policy": "default-src 'self'\r\nSet-Cookie: x=1"}},
        {"cors": {"origins": ["*"], "credentials": True}},
        {"cors": {"origins": ["not-an-origin"]}},
        {"cors": {"origins": ["https://app.example.com"], "methods": ["GE T"]}},
    ):
        assert_problem(await operator.client.put(url, headers=h, json=bad), 422)
    assert_problem(await operator.client.put(url, headers=proxy, json={}), 403)
    assert (await table()).routes[0].policy == policy
    # {} clears it: the edges' global policy again
    r = await operator.client.put(url, headers=h, json={})
    assert r.status_code == 200 and r.json()["edge_policy"] is None
    assert (await table()).routes[0].policy is None


async def test_domain_path_rate_limits_become_routes_of_their_own(operator: Operator) -> None:
    routed = await routed_domain(operator, "shop.example.com")
    domain, h, proxy, table = routed.domain, routed.admin, routed.proxy, routed.table
    assert domain["path_rate_limits"] == []

    before = await table()
    url = f"/api/v1/domains/{domain['id']}/path-rate-limits"
    body = {
        "limits": [
            {"path_prefix": "/login", "rps": 1, "burst": 5},
            {"path_prefix": "/api/bulk", "rps": 50},
        ]
    }
    r = await operator.client.put(url, headers=h, json=body)
    assert r.status_code == 200, r.text
    assert [x["path_prefix"] for x in r.json()["path_rate_limits"]] == ["/login", "/api/bulk"]
    after = await table()
    assert after.version > before.version
    main, login, bulk = after.routes
    assert main.path_prefix == "/" and main.rate_limit_rps is None
    assert (login.path_prefix, login.rate_limit_rps, login.rate_limit_burst) == ("/login", 1, 5)
    assert (bulk.path_prefix, bulk.rate_limit_rps, bulk.rate_limit_burst) == ("/api/bulk", 50, None)
    # the same backends and host as the domain's own route
    assert login.host == bulk.host == main.host and login.backends == main.backends
    # the same limits again do not move the table
    await operator.client.put(url, headers=h, json=body)
    assert (await table()).version == after.version
    # bad input: 422 each, nothing changed
    for bad in (
        {"limits": [{"path_prefix": "/", "rps": 1}]},  # the domain-wide limit has its endpoint
        {"limits": [{"path_prefix": "login", "rps": 1}]},
        {"limits": [{"path_prefix": "/a b", "rps": 1}]},
        {"limits": [{"path_prefix": "/search?q=x", "rps": 1}]},  # a path, not a query
        {"limits": [{"path_prefix": "/x", "rps": 0}]},
        {"limits": [{"path_prefix": "/x", "rps": 1, "burst": 0}]},
        {"limits": [{"path_prefix": "/x", "rps": 1}, {"path_prefix": "/x", "rps": 2}]},
        {"limits": [{"path_prefix": f"/p{i}", "rps": 1} for i in range(33)]},
        {"limits": [{"path_prefix": "/x", "rps": 1, "extra": True}]},
        {},
    ):
        assert_problem(await operator.client.put(url, headers=h, json=bad), 422)
    assert_problem(await operator.client.put(url, headers=proxy, json={"limits": []}), 403)
    assert_problem(
        await operator.client.put(
            f"/api/v1/domains/{uuid.uuid4()}/path-rate-limits", headers=h, json={"limits": []}
        ),
        404,
    )
    assert len((await table()).routes) == 3
    got = await operator.client.get(f"/api/v1/domains/{domain['id']}", headers=h)
    assert len(got.json()["path_rate_limits"]) == 2
    # [] removes them: back to the one route
    r = await operator.client.put(url, headers=h, json={"limits": []})
    assert r.status_code == 200 and r.json()["path_rate_limits"] == []
    assert [route.path_prefix for route in (await table()).routes] == ["/"]
