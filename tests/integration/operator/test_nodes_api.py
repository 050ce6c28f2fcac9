"""``/api/v1/nodes``: registration (idempotent, concurrent), listing with filters and
cursor pagination, get, state changes through the transition table, deletion."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import pytest

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import assert_problem
from zeitwork.core.states import NODE_TRANSITIONS, NodeState
from zeitwork.operator.principal import Scope
from zeitwork.wire.agent import NodeRegistered

PROBLEM = "application/problem+json"


def registration(hostname: str = "node-a", **extra: Any) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "ip_address": "10.0.0.10",
        "resources": {"vcpu": 4, "memory": 8192},
        **extra,
    }


async def register(op: Operator, token: str | None = None, **body: Any) -> dict[str, Any]:
    r = await op.client.post("/api/v1/nodes", headers=op.headers(token), json=registration(**body))
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


async def test_join_token_registers_and_receives_a_node_token(operator: Operator) -> None:
    join = await operator.token(Scope.JOIN)
    r = await operator.client.post(
        "/api/v1/nodes", headers=operator.headers(join), json=registration(disk=10240)
    )
    assert r.status_code == 201, r.text
    body = r.json()
    answer = NodeRegistered.model_validate(body)  # the agent's contract parses it
    assert answer.node_token is not None
    assert body["state"] == "booting"
    assert body["resources"] == {"vcpu": 4.0, "memory": 8192}
    assert body["disk"] == 10240
    # the node token reads its own node, and only that
    own = await operator.client.get(
        f"/api/v1/nodes/{answer.node_id}", headers=operator.headers(answer.node_token)
    )
    assert own.status_code == 200
    other = await register(operator, hostname="node-b")
    r = await operator.client.get(
        f"/api/v1/nodes/{other['id']}", headers=operator.headers(answer.node_token)
    )
    assert r.status_code == 403
    # and it is not an admin
    r = await operator.client.get("/api/v1/nodes", headers=operator.headers(answer.node_token))
    assert r.status_code == 403


async def test_a_join_token_cannot_take_over_a_live_node(operator: Operator) -> None:
    # anyone with a join token could otherwise claim a live node's credential (and its
    # assignments' secrets): a live node is refused, whether named by hostname or by id
    join = await operator.token(Scope.JOIN)
    first = await register(operator, join, id=str(uuid.uuid4()))
    node_id, token = first["id"], first["node_token"]
    await operator.deps.nodes.record_heartbeat(uuid.UUID(node_id), {})  # ready and heard from
    for body in (registration(ip_address="10.6.6.6"), registration(id=node_id)):
        r = await operator.client.post("/api/v1/nodes", headers=operator.headers(join), json=body)
        detail = assert_problem(r, 409)
        assert "is live" in detail["detail"] and "admin token" in detail["detail"]
        assert detail["node_id"] == node_id
    # nothing changed: the address stays, the node's own credential still works
    rows = await operator.sql("SELECT ip_address FROM nodes WHERE id = %s", (node_id,))
    assert rows == [("10.0.0.10",)]
    own = await operator.client.get(f"/api/v1/nodes/{node_id}", headers=operator.headers(token))
    assert own.status_code == 200
    # a node that has just registered (booting, no heartbeat yet) is live too
    booting = await register(operator, join, hostname="node-new")
    r = await operator.client.post(
        "/api/v1/nodes", headers=operator.headers(join), json=registration("node-new")
    )
    assert_problem(r, 409)
    # the admin, and the node's own token, still re-register it
    r = await operator.client.post(
        "/api/v1/nodes", headers=operator.headers(), json=registration(ip_address="10.0.0.11")
    )
    assert (r.status_code, r.json()["node_token"]) == (200, None)
    r = await operator.client.post(
        "/api/v1/nodes",
        headers=operator.headers(token),
        json=registration(id=node_id, ip_address="10.0.0.12"),
    )
    assert (r.status_code, r.json()["ip_address"]) == (200, "10.0.0.12")
    del booting


@pytest.mark.parametrize(
    "make_dead",
    [
        "UPDATE nodes SET state = 'down' WHERE id = %s",
        "UPDATE nodes SET state = 'error' WHERE id = %s",
        "UPDATE nodes SET state = 'unknown' WHERE id = %s",
        "UPDATE nodes SET last_heartbeat_at = now() - interval '31 seconds' WHERE id = %s",
    ],
)
async def test_a_join_token_reregisters_a_dead_node_and_rotates_its_token(
    operator: Operator, make_dead: str
) -> None:
    # an agent whose data dir was wiped after a crash registers its node again
    join = await operator.token(Scope.JOIN)
    first = await operator.client.post(
        "/api/v1/nodes", headers=operator.headers(join), json=registration()
    )
    assert first.status_code == 201
    node_id = first.json()["id"]
    await operator.deps.nodes.record_heartbeat(uuid.UUID(node_id), {})
    await operator.sql(make_dead, (uuid.UUID(node_id),))
    second = await operator.client.post(
        "/api/v1/nodes",
        headers=operator.headers(join),
        json=registration(ip_address="10.0.0.99", resources={"vcpu": 8, "memory": 16384}),
    )
    assert second.status_code == 200, second.text
    assert first.json()["id"] == second.json()["id"]
    assert second.json()["ip_address"] == "10.0.0.99"
    assert second.json()["resources"] == {"vcpu": 8.0, "memory": 16384}
    old, new = first.json()["node_token"], second.json()["node_token"]
    assert old != new
    r = await operator.client.get(f"/api/v1/nodes/{node_id}", headers=operator.headers(old))
    assert r.status_code == 401
    r = await operator.client.get(f"/api/v1/nodes/{node_id}", headers=operator.headers(new))
    assert r.status_code == 200


async def test_a_node_token_reregisters_its_own_node_only(operator: Operator) -> None:
    # an agent restarting with its stored credential registers again with it: the join
    # token may be revoked or expired by then (``zeitwork dev`` revokes it at once)
    join = await operator.token(Scope.JOIN)
    first = await register(operator, join, id=str(uuid.uuid4()))
    node_id, node_token = first["id"], first["node_token"]
    await operator.sql("UPDATE api_tokens SET deleted_at = now() WHERE scope = 'join'")
    r = await operator.client.post(
        "/api/v1/nodes",
        headers=operator.headers(node_token),
        json=registration(id=node_id, ip_address="10.0.0.77"),
    )
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["ip_address"]) == (node_id, "10.0.0.77")
    assert r.json()["node_token"] is None  # the credential it has stays valid
    own = await operator.client.get(
        f"/api/v1/nodes/{node_id}", headers=operator.headers(node_token)
    )
    assert own.status_code == 200
    # never another node, nor one without an id (that would claim a node by hostname)
    other = await register(operator, hostname="node-b")
    for body in (
        registration(id=other["id"], hostname="node-b"),
        registration(hostname="node-b"),
        registration(id=str(uuid.uuid4()), hostname="node-c"),
    ):
        r = await operator.client.post(
            "/api/v1/nodes", headers=operator.headers(node_token), json=body
        )
        assert r.status_code == 403, r.text
    rows = await operator.sql(
        "SELECT ip_address FROM nodes WHERE id = %s", (uuid.UUID(other["id"]),)
    )
    assert rows == [("10.0.0.10",)]
    assert await operator.sql("SELECT 1 FROM nodes WHERE hostname = 'node-c'") == []


async def test_admin_registration_gets_no_token(operator: Operator) -> None:
    body = await register(operator)
    assert body["node_token"] is None
    assert body["node_id"] == body["id"]


async def test_client_supplied_id(operator: Operator) -> None:
    node_id = str(uuid.uuid4())
    body = await register(operator, id=node_id, hostname="with-id")
    assert body["id"] == node_id
    # same id, new hostname: the same node, renamed
    again = await register(operator, id=node_id, hostname="renamed")
    assert (again["id"], again["hostname"]) == (node_id, "renamed")
    # another id claiming a hostname that is taken
    r = await operator.client.post(
        "/api/v1/nodes",
        headers=operator.headers(),
        json=registration(hostname="renamed", id=str(uuid.uuid4()), ip_address="10.9.9.9"),
    )
    assert r.status_code == 409
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["node_id"] == node_id
    # the refused registration changed nothing
    rows = await operator.sql("SELECT ip_address FROM nodes WHERE id = %s", (node_id,))
    assert rows == [("10.0.0.10",)]


async def test_parallel_registration_of_one_hostname_gives_one_row(operator: Operator) -> None:
    join = await operator.token(Scope.JOIN)

    async def one() -> Any:
        return await operator.client.post(
            "/api/v1/nodes", headers=operator.headers(join), json=registration("racer")
        )

    answers = await asyncio.gather(*(one() for _ in range(16)))
    # one creates the node; the others find it live (just registered) and are refused
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [409] * 15, [a.text for a in answers]
    rows = await operator.sql("SELECT count(*) FROM nodes WHERE hostname = 'racer'")
    assert rows == [(1,)]
    live = await operator.sql(
        "SELECT count(*) FROM api_tokens WHERE scope = 'node' AND deleted_at IS NULL"
    )
    assert live == [(1,)]  # only the creator received a node token


@pytest.mark.parametrize(
    "body",
    [
        {"hostname": "x", "ip_address": "10.0.0.1"},
        {"hostname": "", "ip_address": "10.0.0.1", "resources": {"vcpu": 1, "memory": 1}},
        {"hostname": "x", "ip_address": "10.0.0.1", "resources": {"vcpu": 0, "memory": 1}},
        {"hostname": "x", "ip_address": "10.0.0.1", "resources": {"vcpu": 1, "memory": -5}},
        {**registration(), "bogus": 1},
        {**registration(), "region_id": "not-a-uuid"},
        {**registration(), "runtime": "docker"},
    ],
)
async def test_invalid_registration_is_422(operator: Operator, body: dict[str, Any]) -> None:
    r = await operator.client.post("/api/v1/nodes", headers=operator.headers(), json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["errors"]
    assert await operator.sql("SELECT count(*) FROM nodes") == [(0,)]


async def test_malformed_json_is_400(operator: Operator) -> None:
    r = await operator.client.post(
        "/api/v1/nodes",
        headers={**operator.headers(), "content-type": "application/json"},
        content=b'{"hostname": ',
    )
    assert r.status_code == 400
    assert r.headers["content-type"] == PROBLEM


async def test_unknown_region_is_422(operator: Operator) -> None:
    r = await operator.client.post(
        "/api/v1/nodes",
        headers=operator.headers(),
        json=registration(region_id=str(uuid.uuid4())),
    )
    assert r.status_code == 422, r.text


async def test_body_over_the_limit_is_413(operator: Operator) -> None:
    big = registration(hostname="x" * 100, padding="y" * (1024 * 1024 + 10))
    r = await operator.client.post("/api/v1/nodes", headers=operator.headers(), json=big)
    assert r.status_code == 413
    assert r.headers["content-type"] == PROBLEM


async def test_list_is_an_array_with_filter_and_pagination(operator: Operator) -> None:
    r = await operator.client.get("/api/v1/nodes", headers=operator.headers())
    assert (r.status_code, r.json()) == (200, [])
    assert "link" not in r.headers
    ids = [(await register(operator, hostname=f"n{i}"))["id"] for i in range(5)]
    await operator.client.put(
        f"/api/v1/nodes/{ids[0]}/state", headers=operator.headers(), json={"state": "ready"}
    )
    ready = await operator.client.get("/api/v1/nodes?state=ready", headers=operator.headers())
    assert [n["id"] for n in ready.json()] == [ids[0]]
    one = await operator.client.get(f"/api/v1/nodes/{ids[0]}", headers=operator.headers())
    assert ready.json()[0] == one.json()  # a list item is the same document as the node's
    seen: list[str] = []
    url: str | None = "/api/v1/nodes?limit=2"
    pages = 0
    while url is not None:
        r = await operator.client.get(url, headers=operator.headers())
        assert r.status_code == 200
        assert len(r.json()) <= 2
        seen += [n["id"] for n in r.json()]
        pages += 1
        link = r.headers.get("link")
        match = re.fullmatch(r'<([^>]+)>; rel="next"', link) if link else None
        url = match.group(1) if match else None
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    assert seen == sorted(seen, key=uuid.UUID)


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=x", "after=nope", "state=sleeping"]
)
async def test_bad_list_parameters_are_422(operator: Operator, query: str) -> None:
    r = await operator.client.get(f"/api/v1/nodes?{query}", headers=operator.headers())
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM


async def test_get_unknown_and_malformed_ids(operator: Operator) -> None:
    r = await operator.client.get(f"/api/v1/nodes/{uuid.uuid4()}", headers=operator.headers())
    assert r.status_code == 404
    assert r.headers["content-type"] == PROBLEM
    r = await operator.client.get("/api/v1/nodes/123", headers=operator.headers())
    assert r.status_code == 422


async def test_state_changes_follow_the_table(operator: Operator) -> None:
    node = await register(operator, hostname="stateful")
    path = f"/api/v1/nodes/{node['id']}/state"
    for current in NodeState:
        for target in NodeState:
            await operator.sql(
                "UPDATE nodes SET state = %s WHERE id = %s", (current.value, node["id"])
            )
            r = await operator.client.put(path, headers=operator.headers(), json={"state": target})
            if current == target or target in NODE_TRANSITIONS[current]:
                assert r.status_code == 200, (current, target, r.text)
                assert r.json()["state"] == target.value
                continue
            assert r.status_code == 409, (current, target, r.text)
            problem = r.json()
            assert (problem["from"], problem["to"]) == (current.value, target.value)
            assert sorted(problem["allowed"]) == sorted(s.value for s in NODE_TRANSITIONS[current])
            rows = await operator.sql("SELECT state FROM nodes WHERE id = %s", (node["id"],))
            assert rows == [(current.value,)]


async def test_state_change_with_expected_state(operator: Operator) -> None:
    node = await register(operator)
    path = f"/api/v1/nodes/{node['id']}/state"
    r = await operator.client.put(
        path, headers=operator.headers(), json={"state": "draining", "expected_state": "ready"}
    )
    assert r.status_code == 409
    assert r.json()["state"] == "booting"
    r = await operator.client.put(
        path, headers=operator.headers(), json={"state": "ready", "expected_state": "booting"}
    )
    assert r.status_code == 200
    r = await operator.client.put(path, headers=operator.headers(), json={"state": "asleep"})
    assert r.status_code == 422
    r = await operator.client.put(
        f"/api/v1/nodes/{uuid.uuid4()}/state", headers=operator.headers(), json={"state": "ready"}
    )
    assert r.status_code == 404


async def test_delete_refuses_while_instances_are_not_terminated(operator: Operator) -> None:
    join = await operator.token(Scope.JOIN)
    node = await register(operator, join)
    (image,) = await operator.sql("INSERT INTO images (name) VALUES ('img') RETURNING id")
    (instance,) = await operator.sql(
        "INSERT INTO instances (node_id, image_id, vcpu_millis, memory_mib, default_port, state) "
        "VALUES (%s, %s, 500, 128, 8080, 'running') RETURNING id",
        (node["id"], image[0]),
    )
    path = f"/api/v1/nodes/{node['id']}"
    r = await operator.client.delete(path, headers=operator.headers())
    assert r.status_code == 409
    assert r.json()["instances"] == 1
    await operator.sql("UPDATE instances SET state = 'terminated' WHERE id = %s", (instance[0],))
    r = await operator.client.delete(path, headers=operator.headers())
    assert r.status_code == 204
    assert (await operator.client.get(path, headers=operator.headers())).status_code == 404
    assert (await operator.client.delete(path, headers=operator.headers())).status_code == 404
    # its token is revoked with it, and the row stays (soft delete) as terminated
    r = await operator.client.get(path, headers=operator.headers(node["node_token"]))
    assert r.status_code == 401
    rows = await operator.sql("SELECT state, deleted_at IS NOT NULL FROM nodes")
    assert rows == [("terminated", True)]
    # the hostname is free again
    again = await register(operator, join)
    assert again["id"] != node["id"]


async def test_terminated_node_cannot_reregister(operator: Operator) -> None:
    node = await register(operator)
    await operator.client.put(
        f"/api/v1/nodes/{node['id']}/state",
        headers=operator.headers(),
        json={"state": "terminated"},
    )
    r = await operator.client.post(
        "/api/v1/nodes", headers=operator.headers(), json=registration(ip_address="10.9.9.9")
    )
    assert r.status_code == 409
    rows = await operator.sql("SELECT ip_address FROM nodes WHERE id = %s", (node["id"],))
    assert rows == [("10.0.0.10",)]


async def test_metrics_count_nodes_by_state(operator: Operator) -> None:
    for name in ("m1", "m2", "m3"):
        await register(operator, hostname=name)
    first = (await operator.client.get("/api/v1/nodes?limit=1", headers=operator.headers())).json()
    await operator.client.put(
        f"/api/v1/nodes/{first[0]['id']}/state", headers=operator.headers(), json={"state": "ready"}
    )
    text = (await operator.client.get("/metrics")).text
    assert 'zeitwork_nodes{state="booting"} 2.0' in text
    assert 'zeitwork_nodes{state="ready"} 1.0' in text
    assert 'zeitwork_nodes{state="down"} 0.0' in text
    route = 'route="/api/v1/nodes/{node_id}/state"'
    assert f'zeitwork_http_requests_total{{method="PUT",{route},status="200"}} 1.0' in text


async def test_terminating_a_node_revokes_its_tokens(operator: Operator) -> None:
    join = await operator.token(Scope.JOIN)
    answer = NodeRegistered.model_validate(await register(operator, join))
    assert answer.node_token is not None
    own = f"/api/v1/nodes/{answer.node_id}"
    r = await operator.client.get(own, headers=operator.headers(answer.node_token))
    assert r.status_code == 200
    r = await operator.client.put(
        f"{own}/state", headers=operator.headers(), json={"state": "terminated"}
    )
    assert r.status_code == 200, r.text
    r = await operator.client.get(own, headers=operator.headers(answer.node_token))
    assert r.status_code == 401
    rows = await operator.sql(
        "SELECT count(*) FROM api_tokens WHERE node_id = %s AND deleted_at IS NULL",
        (answer.node_id,),
    )
    assert rows == [(0,)]
