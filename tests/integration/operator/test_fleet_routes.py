"""The route table follows node health: instances on a node that is not serving (down,
error, terminated...) are not advertised; a draining node keeps serving; every node state
change bumps the table's version, so long-polls wake."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import heartbeat_body, ready_image, ready_node
from tests.integration.operator.test_projects_routes_api import deploy, project, run
from zeitwork.operator.node_watch import NodeWatch
from zeitwork.operator.principal import Scope
from zeitwork.wire.routes import RouteTable


async def table(op: Operator, proxy: dict[str, str], query: str = "") -> RouteTable:
    r = await op.client.get(f"/api/v1/routes{query}", headers=proxy)
    assert r.status_code == 200, r.text
    return RouteTable.model_validate(r.json())


def addresses(t: RouteTable) -> list[str]:
    return sorted(b.address for b in t.default_backends)


async def set_node_state(op: Operator, node_id: str, state: str) -> None:
    r = await op.client.put(
        f"/api/v1/nodes/{node_id}/state", headers=op.headers(), json={"state": state}
    )
    assert r.status_code == 200, r.text


async def two_running(op: Operator) -> tuple[dict[str, str], list[dict[str, Any]]]:
    nodes = dict([await ready_node(op) for _ in range(2)])
    image = await ready_image(op)
    p = await project(op)
    r = await deploy(op, p["id"], image, 2)
    assert r.status_code == 201, r.text
    instances = r.json()["instances"]
    for n, inst in enumerate(instances):
        await run(op, nodes[inst["node_id"]], inst["id"], f"10.200.{n}.7")
    return nodes, instances


async def test_down_node_leaves_the_table_and_wakes_long_polls(operator: Operator) -> None:
    nodes, instances = await two_running(operator)
    proxy = operator.headers(await operator.token(Scope.PROXY))
    before = await table(operator, proxy)
    assert addresses(before) == ["10.200.0.7:8080", "10.200.1.7:8080"]
    victim = instances[0]["node_id"]

    # the down detector marks the silent node down: the long-poll wakes without the wait
    waiter = asyncio.create_task(
        operator.client.get(f"/api/v1/routes?version={before.version}&wait=20", headers=proxy)
    )
    await asyncio.sleep(0.3)
    await operator.sql(
        "UPDATE nodes SET last_heartbeat_at = now() - interval '1 hour' WHERE id = %s", (victim,)
    )
    changed = time.monotonic()
    down, _ready = await NodeWatch(nodes=operator.deps.nodes, timeout_seconds=30).sweep()
    assert [str(d) for d in down] == [victim]
    r = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - changed < 1.5
    after = RouteTable.model_validate(r.json())
    assert after.version > before.version
    assert addresses(after) == ["10.200.1.7:8080"]

    # its heartbeat brings it back (ready), and its instance with it
    token = nodes[victim]
    r = await operator.client.post(
        f"/api/v1/nodes/{victim}/heartbeat", headers=operator.headers(token), json=heartbeat_body()
    )
    assert r.status_code == 204
    back = await table(operator, proxy)
    assert back.version > after.version
    assert addresses(back) == ["10.200.0.7:8080", "10.200.1.7:8080"]


async def test_draining_keeps_serving_other_states_do_not(operator: Operator) -> None:
    _nodes, instances = await two_running(operator)
    proxy = operator.headers(await operator.token(Scope.PROXY))
    node = instances[0]["node_id"]
    v0 = (await table(operator, proxy)).version

    await set_node_state(operator, node, "draining")
    t = await table(operator, proxy)
    assert t.version > v0
    assert addresses(t) == ["10.200.0.7:8080", "10.200.1.7:8080"]

    await set_node_state(operator, node, "error")
    t2 = await table(operator, proxy)
    assert t2.version > t.version
    assert addresses(t2) == ["10.200.1.7:8080"]

    # a heartbeat does not silently revive an error node
    await operator.client.post(
        f"/api/v1/nodes/{node}/heartbeat", headers=operator.headers(), json=heartbeat_body()
    )
    t3 = await table(operator, proxy)
    assert addresses(t3) == ["10.200.1.7:8080"] and t3.version == t2.version


async def test_a_heartbeat_without_a_state_change_does_not_bump(operator: Operator) -> None:
    nodes, _instances = await two_running(operator)
    proxy = operator.headers(await operator.token(Scope.PROXY))
    v0 = (await table(operator, proxy)).version
    node, token = next(iter(nodes.items()))
    r = await operator.client.post(
        f"/api/v1/nodes/{node}/heartbeat", headers=operator.headers(token), json=heartbeat_body()
    )
    assert r.status_code == 204
    assert (await table(operator, proxy)).version == v0
