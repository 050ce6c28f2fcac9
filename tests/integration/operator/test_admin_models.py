"""The CLI's ``AdminClient`` against the live operator app on a real PostgreSQL: every answer
it parses (``zeitwork.wire.admin``) equals what the operator builds from its own row
(``operator.api.convert``), for tokens, images, nodes, projects, deployments, instances and
domains (the instance list is JSON built by PostgreSQL, the rest by the models)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from tests.images import BuiltImage
from tests.integration.operator.conftest import Operator
from tests.integration.operator.fleet import ready_node
from zeitwork.clients.admin import AdminClient
from zeitwork.core.states import DeploymentState, ImageState, InstanceState, NodeState
from zeitwork.operator.api.convert import (
    deployment_out,
    domain_out,
    image_out,
    instance_out,
    node_out,
    project_out,
    token_out,
)
from zeitwork.wire.admin import InstanceOut, Scope
from zeitwork.wire.routes import PathRateLimit


@pytest.fixture
async def client(operator: Operator) -> AsyncIterator[AdminClient]:
    operator.client.headers.update(operator.headers())
    # the fixture's client goes through the app in-process; AdminClient closes it, the
    # fixture closes it again (harmless)
    async with AdminClient(base_url="http://operator.test", token="", http=operator.client) as c:
        yield c


def same(answer: BaseModel, expected: BaseModel, *, without: set[str] | None = None) -> None:
    assert answer.model_dump(exclude=without) == expected.model_dump(exclude=without)


async def test_every_admin_answer_parses_to_the_operators_model(
    operator: Operator, client: AdminClient, busybox_image: BuiltImage
) -> None:
    deps = operator.deps

    token = await client.create_token("proxy", name="round trip")
    assert token.scope is Scope.PROXY and token.token
    same(token, token_out(await deps.tokens.get(token.id)), without={"token"})

    image = await client.import_image(busybox_image.path, name="web")
    assert image.status is ImageState.READY and image.digest == busybox_image.digest
    same(image, image_out(await deps.images.get(image.id)))
    (listed_image,) = await client.images()
    same(listed_image, image)

    node_id, _ = await ready_node(operator, "rt-node", vcpu=2, memory=2048)
    (node,) = await client.nodes()
    assert node.state is NodeState.READY and node.heartbeat is not None
    same(node, node_out(await deps.nodes.get(uuid.UUID(node_id))))
    drained = await client.drain_node(node.id)
    assert drained.state is NodeState.DRAINING
    same(drained, node_out(await deps.nodes.get(node.id)))
    assert (await client.undrain_node(node.id)).state is NodeState.READY

    project = await client.create_project("Round Trip")
    assert project.slug == "round-trip"
    same(project, project_out(await deps.projects.get_project(project.id)))
    same((await client.projects())[0], project)

    created = await client.create_deployment(
        project_id=project.id, image_id=image.id, port=8080, replicas=1, env={"A": "1"}
    )
    row, instance_ids = await deps.projects.get_deployment(created.id)
    same(created, deployment_out(row, instance_ids), without={"instances"})
    assert created.state is DeploymentState.DEPLOYING
    (placed,) = created.instances
    assert placed.environment_variables is None  # names only (values: GET /instances/{id})
    same(placed, instance_out(await deps.instances.get(placed.id)))
    (listed,) = await client.deployments()
    same(listed, deployment_out(row))  # lists leave out the instance ids

    one = await client.instance(placed.id)
    assert one.state is InstanceState.PENDING and one.environment_variables == {"A": "1"}
    same(one, instance_out(await deps.instances.get(placed.id), secrets=True))
    (from_sql,) = await client.instances(deployment_id=created.id)
    assert isinstance(from_sql, InstanceOut)
    same(from_sql, instance_out(await deps.instances.get(placed.id)))
    assert from_sql.environment_variables is None and from_sql.environment_variable_names == ["A"]

    domain = await client.create_domain("rt.example.com", project_id=project.id, deployment_id=None)
    assert domain.verification_record is not None and domain.verification_record.type == "TXT"
    same(domain, domain_out(await deps.projects.get_domain(domain.id)))
    bound = await client.bind_domain(domain.id, created.id)
    assert bound.deployment_id == created.id
    limited = await client.set_domain_rate_limit(domain.id, 5.0, 10)
    assert (limited.rate_limit_rps, limited.rate_limit_burst) == (5.0, 10)
    paths = await client.set_domain_path_rate_limits(
        domain.id, [PathRateLimit(path_prefix="/login", rps=1.0, burst=3)]
    )
    assert paths.path_rate_limits == [PathRateLimit(path_prefix="/login", rps=1.0, burst=3)]
    policy = await client.set_domain_edge_policy(
        domain.id, {"cors": {"origins": ["https://a.example"]}, "headers": {"hsts_max_age": 0}}
    )
    assert policy.edge_policy is not None and policy.edge_policy.cors is not None
    assert policy.edge_policy.cors.origins == ["https://a.example"]
    (listed_domain,) = await client.domains()
    same(listed_domain, policy)
    same(policy, domain_out(await deps.projects.get_domain(domain.id)))

    stopped = await client.terminate_instance(placed.id)
    assert stopped.desired_state == "terminated"
    same(stopped, instance_out(await deps.instances.get(placed.id)))
