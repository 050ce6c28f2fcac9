"""Releases end to end through the operator: deploys rolled out by the reconcile loop
with fake agents reporting state and health, the route table checked at every step."""

from __future__ import annotations

from tests.integration.operator.conftest import Operator, OperatorFactory
from tests.integration.operator.fleet import ready_image
from tests.integration.operator.releases_kit import FAST, Platform, bind, platform
from zeitwork.core.errors import Conflict
from zeitwork.operator.main import build_reconcile_loop
from zeitwork.operator.reconcile import rollout_plan as rp
from zeitwork.operator.reconcile.releases import ReleaseReconciler


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


async def serving_v1(
    operator: Operator, replicas: int = 2, host: str = "app.example.com"
) -> Platform:
    p = await platform(operator)
    await p.deploy(replicas=replicas)
    await bind(p, host)
    await p.converge(lambda: is_state(p, 1, "active"))
    return p


async def is_state(p: Platform, version: int, state: str) -> bool:
    return bool((await p.release(version))["state"] == state)


async def test_a_release_whose_instances_exit_fails_and_the_previous_keeps_serving(
    operator: Operator,
) -> None:
    p = await serving_v1(operator)
    v1 = await p.release(1)
    r = await operator.client.post(
        f"/api/v1/projects/{p.project['slug']}/releases",
        headers=operator.headers(),
        json={"image": p.image, "strategy": FAST},
    )
    v2 = r.json()
    p.verdicts.verdicts[v2["id"]] = "exit"
    seen = await p.converge(
        lambda: is_state(p, 2, "failed"), host="app.example.com", min_backends=2
    )
    assert all(step == [v1["id"]] * 2 for step in seen)
    failed = await p.release(2)
    assert "3" in failed["error"] and failed["rollout"]["state"] == "failed", failed
    assert not failed["current"] and (await p.release(1))["current"]
    await p.converge(lambda: only_versions(p, [1, 1]), host="app.example.com", min_backends=2)
    errors = await operator.sql(
        "SELECT kind FROM events WHERE release_id = %s AND level = 'error'", (v2["id"],)
    )
    assert ("rollout.failed",) in errors and ("instance.exited",) in errors


async def only_versions(p: Platform, versions: list[int]) -> bool:
    return [v for v, *_ in await p.live()] == versions


async def test_an_unhealthy_release_fails_past_its_healthy_deadline_with_the_checks_detail(
    operator: Operator,
) -> None:
    p = await serving_v1(operator)
    v2 = await p.deploy(strategy=FAST | {"healthy_deadline": 1})
    p.verdicts.verdicts[v2["id"]] = "unhealthy"
    await p.converge(
        lambda: is_state(p, 2, "failed"), host="app.example.com", min_backends=2, seconds=8
    )
    failed = await p.release(2)
    assert "GET /healthz -> 500" in failed["error"], failed["error"]
    await p.converge(lambda: only_versions(p, [1, 1]), host="app.example.com", min_backends=2)


async def test_rollback_makes_a_new_release_from_the_previous_good_one(operator: Operator) -> None:
    p = await serving_v1(operator)
    v1 = await p.release(1)
    other = await ready_image(operator, "app-v2")
    await p.deploy(image=other)
    await p.converge(lambda: is_state(p, 2, "active"), host="app.example.com", min_backends=2)
    r = await operator.client.post(
        f"/api/v1/projects/{p.project['slug']}/rollback", headers=operator.headers(), json={}
    )
    assert r.status_code == 201, r.text
    v3 = r.json()
    assert v3["version"] == 3 and v3["reason"] == "rollback"
    assert v3["source_release_id"] == v1["id"] and v3["image_id"] == v1["image_id"]
    # the nodes have room: every replacement starts at once (the source rolled one by one)
    assert v3["strategy"]["max_surge"] == "100%"
    assert v1["strategy"]["max_surge"] != "100%"
    await p.converge(lambda: is_state(p, 3, "active"), host="app.example.com", min_backends=2)
    assert await p.backends("app.example.com") == [v3["id"]] * 2
    r = await operator.client.get(
        f"/api/v1/projects/{p.project['slug']}/releases", headers=operator.headers()
    )
    assert [(x["version"], x["state"]) for x in r.json()] == [
        (3, "active"),
        (2, "superseded"),
        (1, "superseded"),
    ]


async def test_scale_down_and_up_keeps_serving(operator: Operator) -> None:
    p = await serving_v1(operator, replicas=3)
    assert len(await p.backends("app.example.com")) == 3

    async def scale(n: int) -> None:
        r = await operator.client.put(
            f"/api/v1/projects/{p.project['slug']}/scale",
            headers=operator.headers(),
            json={"replicas": n},
        )
        assert r.status_code == 200, r.text
        assert r.json()["replicas"] == n

    await scale(1)
    await p.converge(lambda: only_versions(p, [1]), host="app.example.com")
    assert len(await p.backends("app.example.com")) == 1
    await scale(3)

    async def three_serving() -> bool:
        return len(await p.backends("app.example.com")) == 3

    await p.converge(three_serving, host="app.example.com")
    r = await operator.client.get(
        f"/api/v1/projects/{p.project['slug']}/releases", headers=operator.headers()
    )
    assert len(r.json()) == 1  # scaling is not a release


async def test_an_instance_that_fails_is_replaced(operator: Operator) -> None:
    p = await serving_v1(operator)
    ((victim, node_id),) = await operator.sql(
        "SELECT id, node_id FROM instances WHERE serving ORDER BY id LIMIT 1"
    )
    (agent,) = [a for a in p.agents if a.node_id == str(node_id)]
    await agent.report(str(victim), {"state": "failed", "exit_code": 137, "reason": "killed"})

    async def healed() -> bool:
        return len(await p.backends("app.example.com")) == 2

    await p.converge(healed, host="app.example.com", seconds=5)
    assert str(victim) not in {
        str(i) for i, *_ in await operator.sql("SELECT id FROM instances WHERE serving")
    }


async def test_node_drain_moves_every_instance_off_the_node(operator: Operator) -> None:
    p = await serving_v1(operator)
    drained = p.agents[0].node_id
    r = await operator.client.post(f"/api/v1/nodes/{drained}/drain", headers=operator.headers())
    assert r.status_code == 200 and r.json()["state"] == "draining", r.text

    async def moved() -> bool:
        rows = await operator.sql(
            "SELECT count(*) FROM instances WHERE node_id = %s AND state <> 'terminated'",
            (drained,),
        )
        return rows[0][0] == 0 and len(await p.backends("app.example.com")) == 2

    await p.converge(moved, host="app.example.com", min_backends=2)
    r = await operator.client.post(f"/api/v1/nodes/{drained}/undrain", headers=operator.headers())
    assert r.status_code == 200 and r.json()["state"] == "ready", r.text
    r = await operator.client.post(f"/api/v1/nodes/{drained}/undrain", headers=operator.headers())
    assert r.status_code == 200  # already ready: nothing to do
    await operator.sql("UPDATE nodes SET state = 'down' WHERE id = %s", (drained,))
    r = await operator.client.post(f"/api/v1/nodes/{drained}/undrain", headers=operator.headers())
    assert r.status_code == 409, r.text


async def test_a_second_deploy_supersedes_a_running_rollout(operator: Operator) -> None:
    p = await serving_v1(operator)
    v2 = await p.deploy()
    p.verdicts.verdicts[v2["id"]] = "unhealthy"  # it never finishes on its own
    for _ in range(3):
        await p.step()
    v3 = await p.deploy()
    v2_after = await p.release(2)
    assert v2_after["state"] == "superseded" and v2_after["rollout"]["state"] == "superseded"
    assert v3["rollout"]["from_release_id"] == (await p.release(1))["id"]
    await p.converge(lambda: is_state(p, 3, "active"), host="app.example.com", min_backends=2)
    await p.converge(lambda: only_versions(p, [3, 3]), host="app.example.com", min_backends=2)


async def test_an_operator_restarted_mid_rollout_resumes_from_the_rows(
    operator: Operator, operator_factory: OperatorFactory
) -> None:
    p = await serving_v1(operator, replicas=3)
    await p.deploy()
    for _ in range(2):
        await p.step()
    mid = await p.live()
    assert 2 in [v for v, *_ in mid] and 1 in [v for v, *_ in mid]  # really in the middle
    fresh = await operator_factory()  # a new process's stores, pool and loop on the rows
    p.loop = build_reconcile_loop(fresh.deps)
    await p.converge(lambda: is_state(p, 2, "active"), host="app.example.com", min_backends=3)
    await p.converge(lambda: only_versions(p, [2, 2, 2]), host="app.example.com", min_backends=3)
    placed = await operator.sql(
        "SELECT count(*) FROM instances i JOIN releases r ON r.id = i.release_id "
        "WHERE r.version = 2"
    )
    assert placed == [(3,)]  # none placed twice, none lost


async def test_a_node_going_down_mid_rollout_does_not_stop_it(operator: Operator) -> None:
    p = await serving_v1(operator)
    v2 = await p.deploy()
    await p.step()
    dead = p.agents[0]
    await operator.sql(
        "UPDATE nodes SET last_heartbeat_at = now() - interval '1 hour' WHERE id = %s",
        (dead.node_id,),
    )
    p.agents = p.agents[1:]  # its agent is gone with it
    await p.converge(lambda: is_state(p, 2, "active"), host="app.example.com", seconds=5)
    assert await p.backends("app.example.com") == [v2["id"]] * 2
    rows = await operator.sql("SELECT state FROM nodes WHERE id = %s", (dead.node_id,))
    assert rows == [("down",)]
    on_live = await operator.sql(
        "SELECT count(*) FROM instances WHERE release_id = %s AND serving AND node_id = %s",
        (v2["id"], p.agents[0].node_id),
    )
    assert on_live == [(2,)]


async def test_a_conflict_in_one_environment_does_not_stop_the_pass(operator: Operator) -> None:
    first = await platform(operator)
    await first.deploy()
    second = await platform(operator)
    await second.deploy()
    seen: list[object] = []

    def planner(view: rp.EnvironmentView) -> list[rp.Action]:
        seen.append(view.environment_id)
        if len(seen) == 1:
            raise Conflict("moved meanwhile")
        return rp.plan(view)

    reconciler = ReleaseReconciler(
        db=operator.deps.db,
        releases=operator.deps.releases,
        instances=operator.deps.instances,
        instance_service=operator.deps.instance_service,
        planner=planner,
    )
    await reconciler.sweep()
    assert len(seen) == 2  # the second environment was planned and applied
    placed = await operator.sql("SELECT count(*) FROM instances")
    assert placed == [(1,)]
