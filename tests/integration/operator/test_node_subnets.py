"""Node subnets allocated by the operator (stable, race-safe, freed on deletion, an agent's
explicit subnet recorded or refused) and peers in the assignments (long-poll wakes)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
import uuid
from typing import Any

import pytest

from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.fleet import assert_problem, heartbeat_body
from zeitwork.operator.principal import Scope
from zeitwork.wire.agent import Assignments


async def register(op: Operator, hostname: str, *, ip: str = "192.168.9.2", **extra: Any) -> Any:
    join = await op.token(Scope.JOIN)
    return await op.client.post(
        "/api/v1/nodes",
        headers=op.headers(join),
        json={
            "hostname": hostname,
            "ip_address": ip,
            "resources": {"vcpu": 2, "memory": 2048},
            **extra,
        },
    )


async def silence(op: Operator, hostname: str) -> None:
    """Make the node not live, so a join token may register it again (a live node is 409)."""
    await op.sql("UPDATE nodes SET state = 'down' WHERE hostname = %s", (hostname,))


async def test_subnets_come_from_the_pool_and_are_stable(operator: Operator) -> None:
    first = await register(operator, "alpha")
    second = await register(operator, "beta")
    assert first.status_code == 201 and second.status_code == 201
    assert first.json()["subnet"] == "10.88.0.0/24"
    assert second.json()["subnet"] == "10.88.1.0/24"
    # re-registration (same hostname, or same id, with or without declaring it) keeps it
    await silence(operator, "alpha")
    again = await register(operator, "alpha")
    assert again.status_code == 200 and again.json()["subnet"] == "10.88.0.0/24"
    await silence(operator, "alpha")
    same = await register(operator, "alpha", id=first.json()["node_id"], subnet="10.88.0.0/24")
    assert same.status_code == 200 and same.json()["subnet"] == "10.88.0.0/24"
    got = await operator.client.get(
        f"/api/v1/nodes/{first.json()['node_id']}", headers=operator.headers()
    )
    assert got.json()["subnet"] == "10.88.0.0/24"


async def test_an_agent_subnet_is_recorded_or_refused_clearly(operator: Operator) -> None:
    own = await register(operator, "manual", subnet="10.88.0.0/24")
    assert own.status_code == 201 and own.json()["subnet"] == "10.88.0.0/24"
    # the pool skips it
    auto = await register(operator, "auto")
    assert auto.json()["subnet"] == "10.88.1.0/24"
    # a mismatch with what the operator recorded is a conflict naming both
    await silence(operator, "manual")
    body = assert_problem(await register(operator, "manual", subnet="10.77.0.0/24"), 409)
    assert "10.88.0.0/24" in body["detail"] and "10.77.0.0/24" in body["detail"]
    # an overlap with another node's subnet is refused, and nothing is recorded
    body = assert_problem(await register(operator, "overlap", subnet="10.88.0.0/23"), 409)
    assert "overlaps" in body["detail"]
    rows = await operator.sql("SELECT count(*) FROM nodes WHERE hostname = 'overlap'")
    assert rows == [(0,)]
    r = await register(operator, "bad", subnet="10.88.0.1/24")
    assert_problem(r, 422)


async def test_parallel_registrations_get_distinct_subnets(operator: Operator) -> None:
    answers = await asyncio.gather(*(register(operator, f"n{i}") for i in range(12)))
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers]
    subnets = [ipaddress.IPv4Network(a.json()["subnet"]) for a in answers]
    assert len(set(subnets)) == 12
    assert all(s.subnet_of(ipaddress.IPv4Network("10.88.0.0/16")) for s in subnets)
    assert all(s.prefixlen == 24 for s in subnets)


async def test_deletion_frees_the_subnet(operator: Operator) -> None:
    first = (await register(operator, "gone")).json()
    assert first["subnet"] == "10.88.0.0/24"
    r = await operator.client.delete(
        f"/api/v1/nodes/{first['node_id']}", headers=operator.headers()
    )
    assert r.status_code == 204
    assert (await register(operator, "next")).json()["subnet"] == "10.88.0.0/24"


async def test_a_full_pool_is_a_clear_conflict(operator_factory: OperatorFactory) -> None:
    op = await operator_factory(instance_network="10.99.0.0/23", node_subnet_prefix=24)
    assert (await register(op, "a")).json()["subnet"] == "10.99.0.0/24"
    assert (await register(op, "b")).json()["subnet"] == "10.99.1.0/24"
    body = assert_problem(await register(op, "c"), 409)
    assert "10.99.0.0/23" in body["detail"]


async def test_without_a_pool_no_subnet(operator_factory: OperatorFactory) -> None:
    op = await operator_factory(instance_network="")
    r = await register(op, "plain")
    assert r.status_code == 201 and r.json()["subnet"] is None


async def assignments(op: Operator, node_id: str, token: str, query: str = "") -> Assignments:
    r = await op.client.get(
        f"/api/v1/nodes/{node_id}/assignments{query}", headers=op.headers(token)
    )
    assert r.status_code == 200, r.text
    return Assignments.model_validate(r.json())


async def test_peers_follow_serving_nodes_and_wake_long_polls(operator: Operator) -> None:
    a = (await register(operator, "a", ip="192.168.9.2")).json()
    b = (await register(operator, "b", ip="192.168.9.3")).json()
    ta, tb = a["node_token"], b["node_token"]
    first = await assignments(operator, a["node_id"], ta)
    assert first.peers == []  # b is still booting

    waiter = asyncio.create_task(
        operator.client.get(
            f"/api/v1/nodes/{a['node_id']}/assignments?version={first.version}&wait=20",
            headers=operator.headers(ta),
        )
    )
    await asyncio.sleep(0.3)
    changed = time.monotonic()
    r = await operator.client.post(
        f"/api/v1/nodes/{b['node_id']}/heartbeat",
        headers=operator.headers(tb),
        json=heartbeat_body(),
    )
    assert r.status_code == 204
    answer = Assignments.model_validate((await asyncio.wait_for(waiter, 10)).json())
    assert time.monotonic() - changed < 1.5
    assert answer.version != first.version
    assert [(str(p.node_id), p.subnet, p.ip_address) for p in answer.peers] == [
        (b["node_id"], "10.88.1.0/24", "192.168.9.3")
    ]
    # b sees no peer while a is booting; its own subnet is never its peer
    assert (await assignments(operator, b["node_id"], tb)).peers == []

    # b goes down: it leaves a's peers
    await operator.sql("UPDATE nodes SET state = 'down' WHERE id = %s", (uuid.UUID(b["node_id"]),))
    gone = await assignments(operator, a["node_id"], ta)
    assert gone.peers == [] and gone.version != answer.version
    # a long-poll with the current version waits (nothing changed)
    start = time.monotonic()
    same = await assignments(operator, a["node_id"], ta, f"?version={gone.version}&wait=1")
    assert same.version == gone.version and time.monotonic() - start >= 0.9


@pytest.mark.parametrize("prefix", [8, 30])
def test_settings_refuse_a_prefix_that_does_not_fit(prefix: int, tmp_path: Any) -> None:
    from pydantic import ValidationError

    from tests.integration.operator.conftest import make_settings

    with pytest.raises(ValidationError):
        make_settings("postgresql://x/y", tmp_path, node_subnet_prefix=prefix)
