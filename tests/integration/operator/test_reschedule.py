"""Rescheduling off dead nodes, with real PostgreSQL and the real scheduler (agents are
simulated through the API with their node tokens): instances of a node down for longer
than the grace period are lost (failed, reason, reservation released), a deployment's get
replacements on ready nodes (spread, recorded), the returning node is told to remove them,
routes never advertise both, and only one operator acts at a time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.fleet import (
    allocated,
    assert_problem,
    heartbeat_body,
    instance_body,
    ready_image,
    ready_node,
)
from tests.integration.operator.test_projects_routes_api import deploy, project, run
from zeitwork.operator.node_watch import NodeWatch
from zeitwork.operator.principal import Scope
from zeitwork.operator.services.reschedule import Rescheduler
from zeitwork.wire.agent import Assignments
from zeitwork.wire.routes import RouteTable

GRACE = 60.0


def rescheduler(op: Operator, grace: float = GRACE) -> Rescheduler:
    return Rescheduler(
        db=op.deps.db,
        instances=op.deps.instances,
        instance_service=op.deps.instance_service,
        grace_seconds=grace,
    )


async def silence(op: Operator, node_id: str, *, down_for: float) -> None:
    """The node stopped heartbeating and went down ``down_for`` seconds ago."""
    await op.sql(
        "UPDATE nodes SET state = 'down', last_heartbeat_at = now() - interval '1 hour', "
        "state_changed_at = now() - make_interval(secs => %s) WHERE id = %s",
        (down_for, uuid.UUID(node_id)),
    )


async def get(op: Operator, path: str, token: str | None = None) -> Any:
    r = await op.client.get(path, headers=op.headers(token))
    assert r.status_code == 200, r.text
    return r.json()


async def setup_deployment(op: Operator) -> tuple[dict[str, str], dict[str, Any], str]:
    nodes = dict([await ready_node(op) for _ in range(3)])
    image = await ready_image(op)
    p = await project(op)
    r = await deploy(op, p["id"], image, 2)
    assert r.status_code == 201, r.text
    dep = r.json()
    for n, inst in enumerate(dep["instances"]):
        await run(op, nodes[inst["node_id"]], inst["id"], f"10.200.{n}.7")
    return nodes, dep, image


async def test_a_dead_nodes_deployment_instance_is_replaced(operator: Operator) -> None:
    nodes, dep, image = await setup_deployment(operator)
    victim = dep["instances"][0]
    dead, survivor = victim["node_id"], dep["instances"][1]["node_id"]
    [spare] = set(nodes) - {dead, survivor}
    # a stand-alone instance on the dead node: lost too, but nobody replaces it
    r = await operator.client.post(
        "/api/v1/instances",
        headers=operator.headers(),
        json=instance_body(image, node_id=dead),
    )
    assert r.status_code == 201, r.text
    loner = r.json()["id"]
    assert await allocated(operator, dead) == (2000, 1536)

    # down, but within the grace period: nothing happens
    await silence(operator, dead, down_for=GRACE - 10)
    quiet = await rescheduler(operator).sweep()
    assert quiet.leader and quiet.lost == {} and quiet.replaced == {}

    await silence(operator, dead, down_for=GRACE + 1)
    done = await rescheduler(operator).sweep()
    assert set(done.lost[uuid.UUID(dead)]) == {uuid.UUID(victim["id"]), uuid.UUID(loner)}
    assert list(done.replaced) == [uuid.UUID(victim["id"])] and done.waiting == []
    new_id = str(done.replaced[uuid.UUID(victim["id"])])

    old = await get(operator, f"/api/v1/instances/{victim['id']}")
    assert old["state"] == "failed" and old["desired_state"] == "terminated"
    assert "lost" in old["reason"] and dead in old["reason"]
    assert (await get(operator, f"/api/v1/instances/{loner}"))["state"] == "failed"
    assert await allocated(operator, dead) == (0, 0)  # reservations released

    # the replacement: same spec, on the spare node (spread: the survivor has a replica)
    new = await get(operator, f"/api/v1/instances/{new_id}")
    assert new["node_id"] == spare and new["deployment_id"] == dep["id"]
    assert new["resources"] == victim["resources"] and new["default_port"] == 8080
    assert await allocated(operator, spare) == (1000, 512)
    got = await get(operator, f"/api/v1/deployments/{dep['id']}")
    assert new_id in got["instance_ids"]
    rows = await operator.sql(
        "SELECT replaced_by::text FROM instances WHERE id = %s", (uuid.UUID(victim["id"]),)
    )
    assert rows == [(new_id,)]

    # a second pass does nothing more
    again = await rescheduler(operator).sweep()
    assert again.lost == {} and again.replaced == {}

    # the replacement runs: routes show it and the survivor, never the lost one
    await run(operator, nodes[spare], new_id, "10.200.5.7")
    proxy = operator.headers(await operator.token(Scope.PROXY))
    table = RouteTable.model_validate(
        (await operator.client.get("/api/v1/routes", headers=proxy)).json()
    )
    assert sorted(b.address for b in table.default_backends) == [
        "10.200.1.7:8080",
        "10.200.5.7:8080",
    ]

    # the dead node comes back: ready again, its agent is told to remove the old instances
    token = nodes[dead]
    r = await operator.client.post(
        f"/api/v1/nodes/{dead}/heartbeat",
        headers=operator.headers(token),
        json=heartbeat_body(
            instances=[{"id": victim["id"], "state": "running", "ip_address": "10.200.0.7"}]
        ),
    )
    assert r.status_code == 204
    assert (await get(operator, f"/api/v1/nodes/{dead}"))["state"] == "ready"
    assigned = Assignments.model_validate(
        await get(operator, f"/api/v1/nodes/{dead}/assignments", token)
    )
    desired = {str(a.id): a.desired_state for a in assigned.instances}
    assert desired == {victim["id"]: "terminated", loner: "terminated"}
    # its heartbeat did not bring the lost instance back; reports other than terminated fail
    assert (await get(operator, f"/api/v1/instances/{victim['id']}"))["state"] == "failed"
    r = await operator.client.put(
        f"/api/v1/instances/{victim['id']}/state",
        headers=operator.headers(token),
        json={"state": "running", "ip_address": "10.200.0.7", "port": 8080},
    )
    assert_problem(r, 409)
    table2 = RouteTable.model_validate(
        (await operator.client.get("/api/v1/routes", headers=proxy)).json()
    )
    assert "10.200.0.7:8080" not in [b.address for b in table2.default_backends]
    # the agent stops it and reports terminated: nothing is released twice
    for iid in (victim["id"], loner):
        r = await operator.client.put(
            f"/api/v1/instances/{iid}/state",
            headers=operator.headers(token),
            json={"state": "terminated"},
        )
        assert r.status_code == 200, r.text
    assert await allocated(operator, dead) == (0, 0)
    left = Assignments.model_validate(
        await get(operator, f"/api/v1/nodes/{dead}/assignments", token)
    )
    assert left.instances == []


async def test_no_room_waits_and_places_later(operator: Operator) -> None:
    a, _ta = await ready_node(operator, vcpu=1, memory=512)
    image = await ready_image(operator)
    p = await project(operator)
    r = await deploy(operator, p["id"], image, 1)
    assert r.status_code == 201, r.text
    [inst] = r.json()["instances"]
    await silence(operator, a, down_for=GRACE + 5)
    first = await rescheduler(operator).sweep()
    assert first.waiting == [uuid.UUID(inst["id"])] and first.replaced == {}
    assert (await get(operator, f"/api/v1/instances/{inst['id']}"))["state"] == "failed"
    b, _tb = await ready_node(operator, vcpu=1, memory=512)
    later = await rescheduler(operator).sweep()
    new = await get(operator, f"/api/v1/instances/{later.replaced[uuid.UUID(inst['id'])]}")
    assert new["node_id"] == b
    # the dead node can now be deleted: its lost instance ends terminated
    r = await operator.client.delete(f"/api/v1/nodes/{a}", headers=operator.headers())
    assert r.status_code == 204, r.text
    assert (await get(operator, f"/api/v1/instances/{inst['id']}"))["state"] == "terminated"


async def test_only_one_operator_reschedules_at_a_time(
    operator: Operator, operator_factory: OperatorFactory
) -> None:
    other = await operator_factory()
    _nodes, dep, _image = await setup_deployment(operator)
    dead = dep["instances"][0]["node_id"]
    await silence(operator, dead, down_for=GRACE + 1)
    passes = await asyncio.gather(
        *(rescheduler(op).sweep() for op in (operator, other, operator, other))
    )
    replaced = [old for p in passes for old in p.replaced]
    assert replaced == [uuid.UUID(dep["instances"][0]["id"])]
    assert sum(1 for p in passes if p.lost) == 1
    rows = await operator.sql(
        "SELECT count(*) FROM instances WHERE deployment_id = %s AND lost_at IS NULL",
        (uuid.UUID(dep["id"]),),
    )
    assert rows == [(2,)]  # the survivor and exactly one replacement


async def test_the_node_watch_runs_the_rescheduler(operator: Operator) -> None:
    _nodes, dep, _image = await setup_deployment(operator)
    dead = dep["instances"][0]["node_id"]
    await operator.sql(
        "UPDATE nodes SET last_heartbeat_at = now() - interval '1 hour', "
        "state_changed_at = now() - interval '1 hour' WHERE id = %s",
        (uuid.UUID(dead),),
    )
    watch = NodeWatch(
        nodes=operator.deps.nodes, timeout_seconds=30, rescheduler=rescheduler(operator, 0.5)
    )
    down, _ready = await watch.sweep()
    assert [str(d) for d in down] == [dead]
    await asyncio.sleep(0.6)
    await watch.sweep()
    old = await get(operator, f"/api/v1/instances/{dep['instances'][0]['id']}")
    assert old["state"] == "failed"
