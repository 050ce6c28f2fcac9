"""``/api/v1/instances``: scheduling (bin-packing, spreading, shortfall), capacity on a
given node, racing placements for the last slot, filters and pagination, state reports
(transition table, node ownership, side effects), termination and capacity release."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.fleet import (
    allocated,
    assert_problem,
    heartbeat_body,
    instance_body,
    ready_image,
    ready_node,
)
from zeitwork.core.states import INSTANCE_TRANSITIONS, InstanceState
from zeitwork.operator.principal import Scope

API = "/api/v1/instances"


async def test_create_schedules_on_a_ready_node_and_reserves_capacity(operator: Operator) -> None:
    node, _ = await ready_node(operator)
    image = await ready_image(operator)
    body = instance_body(image, environment_variables={"SECRET": "s3cr3t", "MODE": "prod"})
    r = await operator.client.post(API, headers=operator.headers(), json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["node_id"] == node
    assert out["state"] == "pending"
    assert out["desired_state"] == "running"
    assert out["resources"] == {"vcpu": 1.0, "memory": 1024}
    assert out["environment_variables"] == {"SECRET": "s3cr3t", "MODE": "prod"}
    assert await allocated(operator, node) == (1000, 1024)
    # single get shows values, the list only names
    r = await operator.client.get(f"{API}/{out['id']}", headers=operator.headers())
    assert r.json()["environment_variables"]["SECRET"] == "s3cr3t"
    r = await operator.client.get(API, headers=operator.headers())
    [listed] = r.json()
    assert listed["environment_variables"] is None
    assert listed["environment_variable_names"] == ["MODE", "SECRET"]


async def test_bin_packing_fills_the_tightest_node_first(operator: Operator) -> None:
    small, _ = await ready_node(operator, vcpu=2, memory=2048)
    big, _ = await ready_node(operator, vcpu=16, memory=32768)
    image = await ready_image(operator)
    nodes = []
    for _ in range(3):
        r = await operator.client.post(API, headers=operator.headers(), json=instance_body(image))
        assert r.status_code == 201, r.text
        nodes.append(r.json()["node_id"])
    assert nodes == [small, small, big]


async def test_nothing_fits_is_409_naming_the_shortfall(operator: Operator) -> None:
    await ready_node(operator, vcpu=2, memory=2048)
    image = await ready_image(operator)
    body = instance_body(image, resources={"vcpu": 4, "memory": 1024})
    r = await operator.client.post(API, headers=operator.headers(), json=body)
    problem = assert_problem(r, 409)
    assert "short by 2 vCPU" in problem["detail"]
    assert problem["shortfall"] == {"vcpu": 2.0}
    assert problem["ready_nodes"] == 1


async def test_no_ready_node_is_409(operator: Operator) -> None:
    image = await ready_image(operator)
    r = await operator.client.post(API, headers=operator.headers(), json=instance_body(image))
    problem = assert_problem(r, 409)
    assert "no ready node" in problem["detail"]


async def test_explicit_node_still_checks_capacity_and_state(operator: Operator) -> None:
    node, _ = await ready_node(operator, vcpu=1, memory=1024)
    image = await ready_image(operator)
    r = await operator.client.post(
        API, headers=operator.headers(), json=instance_body(image, node_id=node)
    )
    assert r.status_code == 201, r.text
    r = await operator.client.post(
        API, headers=operator.headers(), json=instance_body(image, node_id=node)
    )
    assert "short by" in assert_problem(r, 409)["detail"]
    r = await operator.client.post(
        API, headers=operator.headers(), json=instance_body(image, node_id=str(uuid.uuid4()))
    )
    assert_problem(r, 404)
    # a draining node takes nothing
    other, _ = await ready_node(operator)
    r = await operator.client.put(
        f"/api/v1/nodes/{other}/state", headers=operator.headers(), json={"state": "draining"}
    )
    assert r.status_code == 200
    r = await operator.client.post(
        API, headers=operator.headers(), json=instance_body(image, node_id=other)
    )
    assert "not ready" in assert_problem(r, 409)["detail"]


async def test_bad_input(operator: Operator) -> None:
    image = await ready_image(operator)
    h = operator.headers()
    r = await operator.client.post(
        API, headers={**h, "content-type": "application/json"}, content=b"{not json"
    )
    assert_problem(r, 400)
    for bad in (
        {**instance_body(image), "image_id": "nope"},
        {**instance_body(image), "default_port": 0},
        {**instance_body(image), "resources": {"vcpu": 0, "memory": 1}},
        {**instance_body(image), "environment_variables": {"1BAD": "x"}},
        {**instance_body(image), "unknown": 1},
        {**instance_body(image), "restart_policy": "sometimes"},
    ):
        assert_problem(await operator.client.post(API, headers=h, json=bad), 422)
    r = await operator.client.post(API, headers=h, json=instance_body(str(uuid.uuid4())))
    assert_problem(r, 422)
    await operator.sql(
        "UPDATE images SET status = 'building', digest = NULL WHERE id = %s", (image,)
    )
    r = await operator.client.post(API, headers=h, json=instance_body(image))
    assert "not ready" in assert_problem(r, 422)["detail"]
    assert_problem(await operator.client.get(f"{API}/not-a-uuid", headers=h), 422)
    assert_problem(await operator.client.get(f"{API}/{uuid.uuid4()}", headers=h), 404)
    assert_problem(await operator.client.get(f"{API}?state=dancing", headers=h), 422)
    assert_problem(await operator.client.get(API), 401)
    r = await operator.client.post(
        API, headers={**h, "content-type": "application/json"}, content=b" " * (2 << 20)
    )
    assert_problem(r, 413)


async def test_node_tokens_cannot_create_or_list(operator: Operator) -> None:
    _node, token = await ready_node(operator)
    image = await ready_image(operator)
    h = operator.headers(token)
    assert_problem(await operator.client.post(API, headers=h, json=instance_body(image)), 403)
    assert_problem(await operator.client.get(API, headers=h), 403)


async def test_racing_placements_never_over_commit(operator_factory: OperatorFactory) -> None:
    # two operator processes' worth of pools racing for three slots on two nodes
    op = await operator_factory()
    other = await operator_factory()
    a, _ = await ready_node(op, vcpu=2, memory=2048)
    b, _ = await ready_node(op, vcpu=1, memory=1024)
    image = await ready_image(op)

    async def place(o: Operator) -> int:
        r = await o.client.post(API, headers=op.headers(), json=instance_body(image))
        return r.status_code

    codes = await asyncio.gather(*(place(op if i % 2 else other) for i in range(12)))
    assert sorted(codes).count(201) == 3, codes
    assert set(codes) == {201, 409}
    assert await allocated(op, a) == (2000, 2048)
    assert await allocated(op, b) == (1000, 1024)
    rows = await op.sql(
        "SELECT n.id, n.vcpu_millis, sum(i.vcpu_millis) FROM nodes n JOIN instances i "
        "ON i.node_id = n.id GROUP BY n.id"
    )
    assert all(used <= cap for _id, cap, used in rows), rows


async def test_filters_and_pagination(operator: Operator) -> None:
    a, _ = await ready_node(operator, vcpu=2, memory=2048)
    b, _ = await ready_node(operator, vcpu=2, memory=2048)
    image = await ready_image(operator)
    ids = []
    for node in (a, a, b):
        r = await operator.client.post(
            API, headers=operator.headers(), json=instance_body(image, node_id=node)
        )
        ids.append(r.json()["id"])
    h = operator.headers()
    r = await operator.client.get(f"{API}?node_id={a}", headers=h)
    assert sorted(i["id"] for i in r.json()) == sorted(ids[:2])
    r = await operator.client.get(f"{API}?state=running", headers=h)
    assert r.json() == []
    r = await operator.client.get(f"{API}?limit=2", headers=h)
    assert len(r.json()) == 2
    assert 'rel="next"' in r.headers["link"]
    nxt = r.headers["link"].split(";")[0].strip("<>")
    r2 = await operator.client.get(nxt, headers=h)
    assert len(r2.json()) == 1
    assert "link" not in r2.headers
    assert {i["id"] for i in r.json() + r2.json()} == set(ids)


async def test_state_reports_follow_the_table_and_the_node(operator: Operator) -> None:
    node, token = await ready_node(operator)
    _other, other_token = await ready_node(operator)
    image = await ready_image(operator)
    r = await operator.client.post(
        API, headers=operator.headers(), json=instance_body(image, node_id=node)
    )
    iid = r.json()["id"]
    url = f"{API}/{iid}/state"
    # another node's token may not report it
    r = await operator.client.put(
        url, headers=operator.headers(other_token), json={"state": "starting"}
    )
    assert_problem(r, 403)
    r = await operator.client.put(url, headers=operator.headers(token), json={"state": "starting"})
    assert r.status_code == 200, r.text
    r = await operator.client.put(
        url,
        headers=operator.headers(token),
        json={"state": "running", "ip_address": "10.200.0.5", "port": 8080, "log_tail": ["up"]},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["state"], out["ip_address"], out["port"]) == ("running", "10.200.0.5", 8080)
    assert out["log_tail"] == ["up"]
    # running -> pending is illegal
    r = await operator.client.put(url, headers=operator.headers(token), json={"state": "pending"})
    problem = assert_problem(r, 409)
    assert problem["from"] == "running"
    r = await operator.client.put(url, headers=operator.headers(token), json={"state": "bogus"})
    assert_problem(r, 422)
    r = await operator.client.put(
        f"{API}/{uuid.uuid4()}/state", headers=operator.headers(), json={"state": "failed"}
    )
    assert_problem(r, 404)
    r = await operator.client.put(
        url,
        headers=operator.headers(token),
        json={"state": "failed", "exit_code": 137, "oom_killed": True, "reason": "OOM"},
    )
    out = r.json()
    assert (out["exit_code"], out["oom_killed"], out["reason"]) == (137, True, "OOM")
    assert await allocated(operator, node) == (1000, 1024)
    r = await operator.client.put(url, headers=operator.headers(), json={"state": "terminated"})
    assert r.status_code == 200
    assert await allocated(operator, node) == (0, 0)
    r = await operator.client.put(url, headers=operator.headers(), json={"state": "starting"})
    assert_problem(r, 409)


@pytest.mark.parametrize("start", list(InstanceState))
async def test_every_transition_from(operator: Operator, start: InstanceState) -> None:
    node, token = await ready_node(operator)
    image = await ready_image(operator)
    ids: dict[InstanceState, str] = {}
    for target in InstanceState:
        r = await operator.client.post(
            API,
            headers=operator.headers(),
            json=instance_body(image, resources={"vcpu": 0.01, "memory": 1}),
        )
        ids[target] = r.json()["id"]
        await operator.sql(
            "UPDATE instances SET state = %s WHERE id = %s", (start.value, ids[target])
        )
    for target, iid in ids.items():
        r = await operator.client.put(
            f"{API}/{iid}/state", headers=operator.headers(token), json={"state": target.value}
        )
        legal = target == start or target in INSTANCE_TRANSITIONS[start]
        assert r.status_code == (200 if legal else 409), (start, target, r.text)
    del node


async def test_delete_marks_for_termination_then_report_frees(operator: Operator) -> None:
    node, token = await ready_node(operator)
    image = await ready_image(operator)
    r = await operator.client.post(API, headers=operator.headers(), json=instance_body(image))
    iid = r.json()["id"]
    r = await operator.client.delete(f"{API}/{iid}", headers=operator.headers())
    assert r.status_code == 202
    assert r.json()["desired_state"] == "terminated"
    assert r.json()["deleted_at"] is not None
    # gone from the list, still readable, still on the node's assignments until terminated
    assert (await operator.client.get(API, headers=operator.headers())).json() == []
    r = await operator.client.get(f"{API}?include_deleted=true", headers=operator.headers())
    assert [i["id"] for i in r.json()] == [iid]
    assert (
        await operator.client.get(f"{API}/{iid}", headers=operator.headers())
    ).status_code == 200
    r = await operator.client.get(
        f"/api/v1/nodes/{node}/assignments", headers=operator.headers(token)
    )
    [assigned] = r.json()["instances"]
    assert assigned["desired_state"] == "terminated"
    assert await allocated(operator, node) == (1000, 1024)
    assert_problem(await operator.client.delete(f"{API}/{iid}", headers=operator.headers()), 404)
    r = await operator.client.put(
        f"{API}/{iid}/state", headers=operator.headers(token), json={"state": "terminated"}
    )
    assert r.status_code == 200
    assert await allocated(operator, node) == (0, 0)
    r = await operator.client.get(
        f"/api/v1/nodes/{node}/assignments", headers=operator.headers(token)
    )
    assert r.json()["instances"] == []


async def test_state_survives_a_restart(operator_factory: OperatorFactory) -> None:
    op = await operator_factory()
    node, _ = await ready_node(op)
    image = await ready_image(op)
    r = await op.client.post(API, headers=op.headers(), json=instance_body(image))
    iid = r.json()["id"]
    again = await operator_factory()  # a new pool and app on the same database
    r = await again.client.get(f"{API}/{iid}", headers=again.headers())
    assert r.status_code == 200
    assert r.json()["node_id"] == node
    assert await allocated(again, node) == (1000, 1024)


async def test_a_stale_candidate_snapshot_never_places_wrongly(
    operator_factory: OperatorFactory,
) -> None:
    # the scheduler reuses its candidate list for a moment; the database has the last word
    op = await operator_factory()
    other = await operator_factory()  # another process fills the node behind op's back
    a, _ = await ready_node(op, vcpu=2, memory=2048)
    image = await ready_image(op)
    r = await op.client.post(API, headers=op.headers(), json=instance_body(image))
    assert r.json()["node_id"] == a  # op's snapshot now says a has 1 vCPU left
    r = await other.client.post(API, headers=op.headers(), json=instance_body(image))
    assert r.json()["node_id"] == a  # a is full now
    b, _ = await ready_node(op, vcpu=2, memory=2048)
    r = await op.client.post(API, headers=op.headers(), json=instance_body(image))
    assert r.status_code == 201, r.text
    assert r.json()["node_id"] == b  # a refused; the fresh read found b
    await op.client.put(
        f"/api/v1/nodes/{b}/state", headers=op.headers(), json={"state": "draining"}
    )
    r = await op.client.post(API, headers=op.headers(), json=instance_body(image))
    assert_problem(r, 409)  # b is draining although op's snapshot still lists it
    assert await allocated(op, a) == (2000, 2048)
    assert await allocated(op, b) == (1000, 1024)


async def test_list_elements_equal_the_single_answers(operator: Operator) -> None:
    # the list's JSON is built by PostgreSQL, the single answer by Python: same content
    from zeitwork.wire.admin import InstanceOut

    node, token = await ready_node(operator, vcpu=8, memory=8192)
    image = await ready_image(operator)
    h = operator.headers()
    ids = []
    for i, vcpu in enumerate((0.25, 1, 1.5)):
        env = {"Z_LAST": "1", "a_first": "2", "_MID": "3"} if i == 0 else {}
        r = await operator.client.post(
            API,
            headers=h,
            json=instance_body(
                image, resources={"vcpu": vcpu, "memory": 100 + i}, environment_variables=env
            ),
        )
        ids.append(r.json()["id"])
    await operator.client.put(
        f"{API}/{ids[1]}/state",
        headers=operator.headers(token),
        json={
            "state": "failed",
            "exit_code": 3,
            "reason": 'boom "quoted" ü',
            "log_tail": ["a", "b"],
        },
    )
    await operator.client.delete(f"{API}/{ids[2]}", headers=h)
    listed = (await operator.client.get(f"{API}?include_deleted=true", headers=h)).json()
    assert [i["id"] for i in listed] == sorted(ids)
    for item in listed:
        single = (await operator.client.get(f"{API}/{item['id']}", headers=h)).json()
        single["environment_variables"] = None  # values only in single answers
        assert InstanceOut.model_validate(item) == InstanceOut.model_validate(single)
        assert set(item) == set(single)
    first = next(i for i in listed if i["id"] == ids[0])
    assert first["environment_variable_names"] == sorted({"Z_LAST", "a_first", "_MID"})
    assert next(i for i in listed if i["id"] == ids[0])["resources"]["vcpu"] == 0.25
    del node


@pytest.mark.parametrize("address", ["[x", "10.200.0.5:99", "not an address", "a:b]", ""])
async def test_a_report_with_a_bad_address_never_reaches_the_route_table(
    operator: Operator, address: str
) -> None:
    # one bad backend address in the table made every load balancer's route sync crash
    node, token = await ready_node(operator)
    image = await ready_image(operator)
    r = await operator.client.post(
        API, headers=operator.headers(), json=instance_body(image, node_id=node)
    )
    iid = r.json()["id"]
    url = f"{API}/{iid}/state"
    r = await operator.client.put(url, headers=operator.headers(token), json={"state": "starting"})
    assert r.status_code == 200, r.text
    bad = {"state": "running", "ip_address": address, "port": 8080}
    r = await operator.client.put(url, headers=operator.headers(token), json=bad)
    assert_problem(r, 422)
    # nor through a heartbeat's reconciliation
    r = await operator.client.post(
        f"/api/v1/nodes/{node}/heartbeat",
        headers=operator.headers(token),
        json=heartbeat_body(instances=[{"id": iid, **bad}]),
    )
    assert r.status_code == 204, r.text
    assert await operator.sql(
        "SELECT state, ip_address FROM instances WHERE id = %s", (uuid.UUID(iid),)
    ) == [("starting", None)]
    proxy = operator.headers(await operator.token(Scope.PROXY))
    r = await operator.client.get("/api/v1/routes", headers=proxy)
    assert r.status_code == 200
    assert r.json()["default_backends"] == []
    # a row written before addresses were checked is left out of the table
    await operator.sql(
        "UPDATE instances SET state = 'running', ip_address = %s, port = 8080 WHERE id = %s",
        (address, uuid.UUID(iid)),
    )
    r = await operator.client.get("/api/v1/routes", headers=proxy)
    assert r.status_code == 200
    assert r.json()["default_backends"] == []
