"""What node agents call: heartbeats (store the report, a down node comes back) and the
assignments long-poll (answers at once on a new version, wakes within about a second of a
change, times out on time, many waiters at once, node tokens only for their node)."""

from __future__ import annotations

import asyncio
import time
import uuid

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import (
    allocated,
    assert_problem,
    heartbeat_body,
    instance_body,
    ready_image,
    ready_node,
)
from zeitwork.operator.principal import Scope
from zeitwork.wire.agent import Assignments


async def test_heartbeat_stores_report_and_brings_a_down_node_back(operator: Operator) -> None:
    node, token = await ready_node(operator)
    await operator.sql("UPDATE nodes SET state = 'down' WHERE id = %s", (node,))
    iid = str(uuid.uuid4())
    body = heartbeat_body(
        vcpu=4,
        memory=8192,
        runtime="oci",
        instances=[{"id": iid, "state": "running", "ip_address": "10.1.0.2", "port": 80}],
    )
    r = await operator.client.post(
        f"/api/v1/nodes/{node}/heartbeat", headers=operator.headers(token), json=body
    )
    assert r.status_code == 204, r.text
    r = await operator.client.get(f"/api/v1/nodes/{node}", headers=operator.headers())
    out = r.json()
    assert out["state"] == "ready"
    assert out["runtime"] == "oci"
    assert out["last_heartbeat_at"] is not None
    assert out["heartbeat"]["capacity"] == {"vcpu": 4.0, "memory": 8192, "disk": 0}
    rows = await operator.sql(
        "SELECT heartbeat->'instances'->0->>'id' FROM nodes WHERE id = %s", (node,)
    )
    assert rows == [(iid,)]


async def test_heartbeat_failures(operator: Operator) -> None:
    node, token = await ready_node(operator)
    _other, other_token = await ready_node(operator)
    url = f"/api/v1/nodes/{node}/heartbeat"
    assert_problem(await operator.client.post(url, json=heartbeat_body()), 401)
    r = await operator.client.post(
        url, headers=operator.headers(other_token), json=heartbeat_body()
    )
    assert_problem(r, 403)
    r = await operator.client.post(url, headers=operator.headers(token), json={"capacity": {}})
    assert_problem(r, 422)
    r = await operator.client.post(
        f"/api/v1/nodes/{uuid.uuid4()}/heartbeat", headers=operator.headers(), json=heartbeat_body()
    )
    assert_problem(r, 404)


async def test_assignments_answer_at_once_without_or_with_an_old_version(
    operator: Operator,
) -> None:
    node, token = await ready_node(operator)
    url = f"/api/v1/nodes/{node}/assignments"
    r = await operator.client.get(url, headers=operator.headers(token))
    first = Assignments.model_validate(r.json())
    assert first.instances == []
    image = await ready_image(operator)
    r = await operator.client.post(
        "/api/v1/instances",
        headers=operator.headers(),
        json=instance_body(image, environment_variables={"K": "v"}),
    )
    iid = r.json()["id"]
    start = time.monotonic()
    r = await operator.client.get(
        f"{url}?version={first.version}&wait=30", headers=operator.headers(token)
    )
    assert time.monotonic() - start < 2
    got = Assignments.model_validate(r.json())
    assert got.version > first.version
    [one] = got.instances
    assert str(one.id) == iid
    assert one.image.id == uuid.UUID(image)
    assert one.environment_variables == {"K": "v"}
    assert one.desired_state == "running"


async def test_long_poll_wakes_within_a_second_of_a_change(operator: Operator) -> None:
    node, token = await ready_node(operator)
    image = await ready_image(operator)
    url = f"/api/v1/nodes/{node}/assignments"
    version = (await operator.client.get(url, headers=operator.headers(token))).json()["version"]

    async def poll() -> tuple[float, dict[str, object]]:
        r = await operator.client.get(
            f"{url}?version={version}&wait=20", headers=operator.headers(token)
        )
        assert r.status_code == 200, r.text
        return time.monotonic(), r.json()

    waiters = [asyncio.create_task(poll()) for _ in range(20)]  # share one listener
    await asyncio.wait_for(operator.deps.listener.connected.wait(), 10)
    await asyncio.sleep(0.3)
    assert not any(w.done() for w in waiters)
    changed = time.monotonic()
    r = await operator.client.post(
        "/api/v1/instances", headers=operator.headers(), json=instance_body(image)
    )
    assert r.status_code == 201
    results = await asyncio.wait_for(asyncio.gather(*waiters), 10)
    for answered, body in results:
        assert answered - changed < 1.0
        assert body["version"] != version
        assert len(body["instances"]) == 1  # type: ignore[arg-type]


async def test_long_poll_times_out_with_the_same_version(operator: Operator) -> None:
    node, token = await ready_node(operator)
    url = f"/api/v1/nodes/{node}/assignments"
    version = (await operator.client.get(url, headers=operator.headers(token))).json()["version"]
    start = time.monotonic()
    r = await operator.client.get(
        f"{url}?version={version}&wait=1.5", headers=operator.headers(token)
    )
    elapsed = time.monotonic() - start
    assert r.status_code == 200
    assert r.json()["version"] == version
    assert 1.4 <= elapsed < 3.0, elapsed


async def test_long_poll_answers_when_the_operator_drains(operator: Operator) -> None:
    node, token = await ready_node(operator)
    url = f"/api/v1/nodes/{node}/assignments"
    version = (await operator.client.get(url, headers=operator.headers(token))).json()["version"]
    task = asyncio.create_task(
        operator.client.get(f"{url}?version={version}&wait=30", headers=operator.headers(token))
    )
    await asyncio.sleep(0.3)
    operator.deps.stopping.set()
    r = await asyncio.wait_for(task, 5)
    assert r.status_code == 200


async def test_assignments_failures(operator: Operator) -> None:
    node, token = await ready_node(operator)
    _other, other_token = await ready_node(operator)
    url = f"/api/v1/nodes/{node}/assignments"
    assert_problem(await operator.client.get(url), 401)
    assert_problem(await operator.client.get(url, headers=operator.headers(other_token)), 403)
    assert_problem(
        await operator.client.get(f"{url}?wait=61", headers=operator.headers(token)), 422
    )
    assert_problem(
        await operator.client.get(f"{url}?version=-1", headers=operator.headers(token)), 422
    )
    r = await operator.client.get(
        f"/api/v1/nodes/{uuid.uuid4()}/assignments", headers=operator.headers()
    )
    assert_problem(r, 404)


async def test_long_poll_survives_losing_the_listen_connection(operator: Operator) -> None:
    node, token = await ready_node(operator)
    image = await ready_image(operator)
    url = f"/api/v1/nodes/{node}/assignments"
    version = (await operator.client.get(url, headers=operator.headers(token))).json()["version"]
    waiter = asyncio.create_task(
        operator.client.get(f"{url}?version={version}&wait=20", headers=operator.headers(token))
    )
    await asyncio.wait_for(operator.deps.listener.connected.wait(), 10)
    killed = await operator.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE query LIKE 'LISTEN %%' AND datname = current_database()"
    )
    assert killed == [(True,)]
    r = await operator.client.post(
        "/api/v1/instances", headers=operator.headers(), json=instance_body(image)
    )
    assert r.status_code == 201
    changed = time.monotonic()
    answer = await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - changed < 3.5  # the periodic re-read (2 s) or the reconnect
    assert answer.json()["version"] != version
    # and the listener comes back: the next change wakes a waiter at once again
    deadline = time.monotonic() + 10
    while not (
        operator.deps.listener.connected.is_set()
        and await operator.sql(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN %%' AND datname = current_database()"
        )
        == [(1,)]
    ):
        assert time.monotonic() < deadline, "the listener did not reconnect"
        await asyncio.sleep(0.05)
    version = answer.json()["version"]
    waiter = asyncio.create_task(
        operator.client.get(f"{url}?version={version}&wait=20", headers=operator.headers(token))
    )
    await asyncio.sleep(0.3)
    await operator.client.post(
        "/api/v1/instances", headers=operator.headers(), json=instance_body(image)
    )
    changed = time.monotonic()
    await asyncio.wait_for(waiter, 10)
    assert time.monotonic() - changed < 1.0


async def test_heartbeat_statuses_repair_lost_reports(operator: Operator) -> None:
    node, token = await ready_node(operator)
    other, other_token = await ready_node(operator)
    image = await ready_image(operator)

    async def place(on: str) -> str:
        r = await operator.client.post(
            "/api/v1/instances", headers=operator.headers(), json=instance_body(image, node_id=on)
        )
        return str(r.json()["id"])

    running, gone, foreign = await place(node), await place(node), await place(other)
    await operator.client.delete(f"/api/v1/instances/{gone}", headers=operator.headers())
    proxy = operator.headers(await operator.token(Scope.PROXY))
    before = (await operator.client.get("/api/v1/routes", headers=proxy)).json()["version"]
    body = heartbeat_body(
        instances=[
            # pending -> running directly: the reports for starting and running were lost
            {"id": running, "state": "running", "ip_address": "10.1.0.7", "port": 8080},
            {"id": gone, "state": "terminated", "exit_code": 0},
            # another node's instance: ignored
            {"id": foreign, "state": "failed"},
            {"id": str(uuid.uuid4()), "state": "running"},
        ]
    )
    r = await operator.client.post(
        f"/api/v1/nodes/{node}/heartbeat", headers=operator.headers(token), json=body
    )
    assert r.status_code == 204, r.text
    h = operator.headers()
    got = (await operator.client.get(f"/api/v1/instances/{running}", headers=h)).json()
    assert (got["state"], got["ip_address"], got["port"]) == ("running", "10.1.0.7", 8080)
    assert (await operator.client.get(f"/api/v1/instances/{gone}", headers=h)).json()[
        "state"
    ] == "terminated"
    assert (await operator.client.get(f"/api/v1/instances/{foreign}", headers=h)).json()[
        "state"
    ] == "pending"
    assert await allocated(operator, node) == (1000, 1024)  # the terminated one was freed
    table = (await operator.client.get("/api/v1/routes", headers=proxy)).json()
    assert table["version"] > before
    assert [b["address"] for b in table["default_backends"]] == ["10.1.0.7:8080"]
    # a terminated instance never comes back through a heartbeat
    body = heartbeat_body(instances=[{"id": gone, "state": "running"}])
    r = await operator.client.post(
        f"/api/v1/nodes/{node}/heartbeat", headers=operator.headers(token), json=body
    )
    assert r.status_code == 204
    assert (await operator.client.get(f"/api/v1/instances/{gone}", headers=h)).json()[
        "state"
    ] == "terminated"
    del other_token
