"""Database outages answer 503 with Retry-After (never a traceback); state survives a new
operator instance on the same database; the node-down detector."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import psycopg

from tests.integration.operator.conftest import ENV_ADMIN, Operator, OperatorFactory
from zeitwork.core.states import NodeState
from zeitwork.operator.node_watch import NodeWatch

PROBLEM = "application/problem+json"


async def test_unreachable_database_is_503(
    operator_factory: OperatorFactory, tmp_path: Path
) -> None:
    # a socket directory where no PostgreSQL listens
    dead = f"postgresql://postgres@/postgres?host={tmp_path}&connect_timeout=1"
    op = await operator_factory(url=dead, wait=False, db_timeout=0.5)
    r = await op.client.get("/api/v1/nodes", headers=op.headers(ENV_ADMIN))
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == PROBLEM
    assert int(r.headers["retry-after"]) > 0
    assert "Traceback" not in r.text
    ready = await op.client.get("/health/ready")
    assert ready.status_code == 503
    assert "database" in ready.json()["checks"]
    assert (await op.client.get("/health")).status_code == 200
    # a token that needs a lookup also gets 503, not 401
    r = await op.client.get("/api/v1/nodes", headers=op.headers("zw_needs-a-lookup"))
    assert r.status_code == 503
    metrics = await op.client.get("/metrics")
    assert metrics.status_code == 200


async def test_recovers_after_connections_are_killed(operator: Operator, pg_server: str) -> None:
    assert (
        await operator.client.get("/api/v1/nodes", headers=operator.headers())
    ).status_code == 200
    dbname = operator.url.split("?")[0].rsplit("/", 1)[1]
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,)
        )
    statuses = []
    for _ in range(20):
        r = await operator.client.get("/api/v1/nodes", headers=operator.headers())
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503, r.text
        await asyncio.sleep(0.1)
    assert statuses[-1] == 200, statuses


async def test_state_survives_a_new_operator(operator_factory: OperatorFactory) -> None:
    first = await operator_factory()
    r = await first.client.post(
        "/api/v1/nodes",
        headers=first.headers(),
        json={
            "hostname": "keep",
            "ip_address": "10.1.1.1",
            "resources": {"vcpu": 2, "memory": 1024},
        },
    )
    node_id = r.json()["id"]
    await first.deps.db.close()
    second = await operator_factory()
    r = await second.client.get(
        f"/api/v1/nodes/{node_id}", headers=second.headers(first.admin_token)
    )
    assert r.status_code == 200
    assert r.json()["hostname"] == "keep"


async def test_node_watch_marks_silent_nodes_down_and_back(operator: Operator) -> None:
    h = operator.headers()
    r = await operator.client.post(
        "/api/v1/nodes",
        headers=h,
        json={"hostname": "w", "ip_address": "10.0.0.1", "resources": {"vcpu": 1, "memory": 512}},
    )
    node_id = uuid.UUID(r.json()["id"])
    nodes = operator.deps.nodes
    node = await nodes.record_heartbeat(node_id, {"capacity": {"vcpu": 1, "memory": 512}})
    assert node.state.value == "ready"  # a first heartbeat makes a booting node ready
    watch = NodeWatch(nodes=nodes, timeout_seconds=30)
    assert await watch.sweep() == ([], [])
    await operator.sql(
        "UPDATE nodes SET last_heartbeat_at = now() - interval '31 seconds' WHERE id = %s",
        (node_id,),
    )
    assert await watch.sweep() == ([node_id], [])
    assert (await nodes.get(node_id)).state.value == "down"
    # heartbeats resume (recorded by another path than record_heartbeat): ready again
    await operator.sql("UPDATE nodes SET last_heartbeat_at = now() + interval '1 second'")
    assert await watch.sweep() == ([], [node_id])
    assert (await nodes.get(node_id)).state.value == "ready"
    # draining nodes that go silent also go down; terminated ones are left alone
    await operator.sql(
        "UPDATE nodes SET state = 'terminated', last_heartbeat_at = now() - interval '1 hour'"
    )
    assert await watch.sweep() == ([], [])


async def test_draining_node_stays_draining_after_an_outage(operator: Operator) -> None:
    r = await operator.client.post(
        "/api/v1/nodes",
        headers=operator.headers(),
        json={"hostname": "d", "ip_address": "10.0.0.2", "resources": {"vcpu": 1, "memory": 512}},
    )
    node_id = uuid.UUID(r.json()["id"])
    nodes = operator.deps.nodes
    await nodes.record_heartbeat(node_id, {})
    r = await operator.client.put(
        f"/api/v1/nodes/{node_id}/state", headers=operator.headers(), json={"state": "draining"}
    )
    assert r.status_code == 200, r.text
    watch = NodeWatch(nodes=nodes, timeout_seconds=30)
    silent = "UPDATE nodes SET last_heartbeat_at = now() - interval '31 seconds' WHERE id = %s"
    # the detector path: down, then back to draining (not ready)
    await operator.sql(silent, (node_id,))
    assert await watch.sweep() == ([node_id], [])
    assert (await nodes.get(node_id)).state.value == "down"
    await operator.sql(
        "UPDATE nodes SET last_heartbeat_at = now() + interval '1 second' WHERE id = %s",
        (node_id,),
    )
    assert await watch.sweep() == ([], [node_id])
    assert (await nodes.get(node_id)).state.value == "draining"
    # the heartbeat path: down again, a heartbeat brings it back to draining
    await operator.sql(silent, (node_id,))
    assert await watch.sweep() == ([node_id], [])
    assert (await nodes.record_heartbeat(node_id, {})).state.value == "draining"
    # once undrained, a later outage comes back ready (nothing stale is remembered)
    await nodes.set_state(node_id, NodeState.READY)
    await operator.sql(silent, (node_id,))
    assert await watch.sweep() == ([node_id], [])
    assert (await nodes.record_heartbeat(node_id, {})).state.value == "ready"
    rows = await operator.sql("SELECT state_before_down FROM nodes WHERE id = %s", (node_id,))
    assert rows == [(None,)]


async def test_node_watch_loop_stops_on_event(operator: Operator) -> None:
    watch = NodeWatch(nodes=operator.deps.nodes, timeout_seconds=1.5)
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
