"""The releases API's answers and refusals: problem+json for bad input, defaults taken
from the current release, secrets sealed at rest and only opened in a node's assignments."""

from __future__ import annotations

import uuid

from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import assert_problem
from tests.integration.operator.releases_kit import FAST, platform


async def test_deploy_refuses_unknown_or_unready_images_before_anything_starts(
    operator: Operator,
) -> None:
    p = await platform(operator)
    url = f"/api/v1/projects/{p.project['slug']}/releases"
    r = await operator.client.post(
        url, headers=operator.headers(), json={"image": str(uuid.uuid4())}
    )
    assert "does not exist" in assert_problem(r, 404)["detail"]
    r = await operator.client.post(url, headers=operator.headers(), json={"image": "nginx:latest"})
    assert "import the image" in assert_problem(r, 422)["detail"]
    (pending,) = await operator.sql(
        "INSERT INTO images (name, status) VALUES ('building', 'pending') RETURNING id"
    )
    r = await operator.client.post(url, headers=operator.headers(), json={"image": str(pending[0])})
    assert "not ready" in assert_problem(r, 422)["detail"]
    r = await operator.client.post(
        "/api/v1/projects/no-such-app/releases", headers=operator.headers(), json={"image": p.image}
    )
    assert_problem(r, 404)
    r = await operator.client.post(
        url, headers=operator.headers(), json={"image": p.image, "replicas": -1}
    )
    assert_problem(r, 422)
    assert await operator.sql("SELECT count(*) FROM releases") == [(0,)]
    assert await operator.sql("SELECT count(*) FROM instances") == [(0,)]


async def test_not_enough_capacity_is_a_409_naming_the_shortfall(operator: Operator) -> None:
    p = await platform(operator, nodes=1, vcpu=1)
    r = await operator.client.post(
        f"/api/v1/projects/{p.project['slug']}/releases",
        headers=operator.headers(),
        json={"image": p.image, "replicas": 3, "resources": {"vcpu": 1, "memory": 256}},
    )
    body = assert_problem(r, 409)
    assert "not enough capacity for 3 new instance(s)" in body["detail"], body
    assert "shortfall" in body
    assert await operator.sql("SELECT count(*) FROM releases") == [(0,)]


async def test_defaults_come_from_the_current_release(operator: Operator) -> None:
    p = await platform(operator)
    v1 = await p.deploy(
        port=9000,
        replicas=2,
        env={"MODE": "prod"},
        resources={"vcpu": 0.5, "memory": 128},
        health_check={"type": "http", "path": "/healthz"},
        restart_policy="on-failure",
    )
    assert v1["health_check"]["type"] == "http" and v1["port"] == 9000
    v2 = await p.deploy(env={"EXTRA": "1"})
    assert v2["version"] == 2 and v2["port"] == 9000 and v2["replicas"] == 2
    assert v2["env"] == {"MODE": "prod", "EXTRA": "1"}
    assert v2["resources"] == {"vcpu": 0.5, "memory": 128}
    assert v2["health_check"]["path"] == "/healthz" and v2["restart_policy"] == "on-failure"
    assert v2["strategy"]["min_healthy_time"] == 0  # FAST, from v1
    first = await platform(operator)
    r = await operator.client.post(
        f"/api/v1/projects/{first.project['id']}/releases",
        headers=operator.headers(),
        json={"image": first.image},
    )
    assert r.status_code == 201, r.text
    plain = r.json()
    assert plain["health_check"]["type"] == "tcp" and plain["port"] == 8080
    assert plain["strategy"]["type"] == "rolling" and plain["replicas"] == 1


async def test_env_changes_make_releases_and_secrets_are_never_shown(operator: Operator) -> None:
    p = await platform(operator)
    base = f"/api/v1/projects/{p.project['slug']}/env"
    r = await operator.client.patch(base, headers=operator.headers(), json={"set": {"A": "1"}})
    assert "does not exist" in assert_problem(r, 404)["detail"]  # no environment yet
    await p.deploy(env={"A": "1"})
    r = await operator.client.patch(
        base,
        headers=operator.headers(),
        json={"set": {"B": "2"}, "secrets": {"TOKEN": "s3cret-value"}},
    )
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert v2["reason"] == "config" and v2["version"] == 2
    assert v2["env"] == {"A": "1", "B": "2"} and v2["secret_names"] == ["TOKEN"]
    assert "s3cret-value" not in r.text
    r = await operator.client.get(base, headers=operator.headers())
    assert r.json() == {
        "environment": "production",
        "env": {"A": "1", "B": "2"},
        "secret_names": ["TOKEN"],
    }
    stored = await operator.sql("SELECT secrets::text FROM releases WHERE version = 2")
    assert "s3cret-value" not in stored[0][0] and "TOKEN" in stored[0][0]
    r = await operator.client.patch(base, headers=operator.headers(), json={"unset": ["NOPE"]})
    assert_problem(r, 404)
    r = await operator.client.patch(
        base, headers=operator.headers(), json={"set": {"X": "1"}, "unset": ["X"]}
    )
    assert_problem(r, 422)
    r = await operator.client.patch(base, headers=operator.headers(), json={"set": {"1X": "1"}})
    assert_problem(r, 422)
    # the release the reconciler places carries the secret, opened, to its node only
    p.loop.interval = 0.1
    await p.step()
    agent = p.agents[0]
    found = {}
    for a in p.agents:
        r = await operator.client.get(
            f"/api/v1/nodes/{a.node_id}/assignments", headers=operator.headers(a.token)
        )
        for inst in r.json()["instances"]:
            if inst["release_id"] == v2["id"]:
                found = inst
                agent = a
    assert found, "v2 was placed"
    assert found["environment_variables"] == {"A": "1", "B": "2", "TOKEN": "s3cret-value"}
    assert found["health_check"]["type"] == "tcp" and found["stop_timeout"] == 10.0
    r = await operator.client.get(f"/api/v1/instances/{found['id']}", headers=operator.headers())
    assert "s3cret-value" not in r.text
    assert agent.node_id


async def test_rollback_refusals(operator: Operator) -> None:
    p = await platform(operator)
    url = f"/api/v1/projects/{p.project['slug']}/rollback"
    r = await operator.client.post(url, headers=operator.headers(), json={})
    assert_problem(r, 404)  # no environment yet
    await p.deploy()
    r = await operator.client.post(url, headers=operator.headers(), json={})
    assert "no current release" in assert_problem(r, 409)["detail"]
    for _ in range(3):
        await p.step()
    r = await operator.client.post(url, headers=operator.headers(), json={})
    assert "nothing to roll back to" in assert_problem(r, 409)["detail"]
    r = await operator.client.post(url, headers=operator.headers(), json={"version": 7})
    assert_problem(r, 404)
    r = await operator.client.post(url, headers=operator.headers(), json={"version": 0})
    assert_problem(r, 422)


async def test_status_lists_instances_with_health_and_domains(operator: Operator) -> None:
    p = await platform(operator)
    await p.deploy(replicas=2, strategy=FAST)
    r = await operator.client.post(
        "/api/v1/domains",
        headers=operator.headers(),
        json={
            "name": "status.example.com",
            "project_id": p.project["id"],
            "environment": "production",
        },
    )
    assert r.status_code == 201 and r.json()["project_environment_id"], r.text
    for _ in range(4):
        await p.step()
    status = await p.status()
    assert status["domains"] == ["status.example.com"] and status["replicas"] == 2
    assert status["current_release"]["version"] == 1 and status["rollout"] is None
    assert [(i["version"], i["health"], i["serving"]) for i in status["instances"]] == [
        (1, "healthy", True),
        (1, "healthy", True),
    ]
    assert status["instances"][0]["last_check"]["detail"] == "tcp :8080 open"
    r = await operator.client.get(
        f"/api/v1/projects/{p.project['slug']}/status?environment=Bad", headers=operator.headers()
    )
    assert_problem(r, 422)
    r = await operator.client.get(
        f"/api/v1/projects/{p.project['slug']}/status?environment=staging",
        headers=operator.headers(),
    )
    assert_problem(r, 404)
