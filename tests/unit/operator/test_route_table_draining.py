"""The route table leaves a draining instance out of every pool, ``default_backends``
included: a balancer drains a backend only once no pool lists it, and only then gives its
WebSockets their close (1001) after ``LB_TUNNEL_DRAIN_TIMEOUT``, before the release's
``drain_timeout`` stops the instance (tests/e2e/test_websocket_release.py runs it for real)."""

from __future__ import annotations

import uuid

from zeitwork.operator.api.routes import route_table
from zeitwork.operator.db.routes import DomainBinding, RouteRows, RunningInstance


def instance(env: uuid.UUID, last: int, **state: bool) -> RunningInstance:
    return RunningInstance(
        id=uuid.uuid4(),
        deployment_id=None,
        ip_address=f"10.0.0.{last}",
        port=8080,
        project_environment_id=env,
        release_id=uuid.uuid4(),
        **state,
    )


def test_a_draining_instance_is_in_no_pool_a_starting_one_stays_a_default_backend() -> None:
    env = uuid.uuid4()
    rows = RouteRows(
        version=7,
        domains=[DomainBinding(host="app.test", deployment_id=None, project_environment_id=env)],
        instances=[
            instance(env, 2, routable=True),  # serving
            instance(env, 3, draining=True),  # left the route, runs to its drain's end
            instance(env, 4),  # placed, not healthy yet: not routed, still a default one
        ],
    )
    table = route_table(rows)
    [route] = table.routes
    assert [b.address for b in route.backends] == ["10.0.0.2:8080"]
    assert [b.address for b in table.default_backends] == ["10.0.0.2:8080", "10.0.0.4:8080"]


def test_an_instance_of_no_release_is_a_default_backend_as_before() -> None:
    loose = RunningInstance(id=uuid.uuid4(), deployment_id=None, ip_address="10.0.0.9", port=80)
    table = route_table(RouteRows(version=1, domains=[], instances=[loose]))
    assert [b.address for b in table.default_backends] == ["10.0.0.9:80"]
