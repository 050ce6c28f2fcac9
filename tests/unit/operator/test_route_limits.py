"""Per-route limits on releases (migration 0017): what a deploy may ask for (422 otherwise),
what the next release inherits, and how the route table carries the current release's."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from zeitwork.operator.api.routes import route_table
from zeitwork.operator.db.routes import DomainBinding, RouteRows, RunningInstance
from zeitwork.operator.services.releases import inherited_limit
from zeitwork.wire.releases import ReleaseCreate
from zeitwork.wire.routes import Route

LIMITS = ("response_idle_timeout", "tunnel_idle_timeout", "max_tunnels")


def create(**fields: Any) -> ReleaseCreate:
    return ReleaseCreate.model_validate({"image": "img", **fields})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_idle_timeout", 1),
        ("response_idle_timeout", 300.5),
        ("response_idle_timeout", 86400),
        ("response_idle_timeout", 0),
        ("tunnel_idle_timeout", 1.0),
        ("tunnel_idle_timeout", 0),
        ("tunnel_idle_timeout", 86400),
        ("max_tunnels", 0),
        ("max_tunnels", 1),
        ("max_tunnels", 1_000_000),
    ],
)
def test_limits_in_range_are_taken(field: str, value: float) -> None:
    assert getattr(create(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_idle_timeout", -1),
        ("response_idle_timeout", 0.5),  # under a second: a typo of a unit, refused
        ("response_idle_timeout", 86400.5),
        ("response_idle_timeout", float("inf")),
        ("response_idle_timeout", float("nan")),
        ("response_idle_timeout", "ten"),
        ("response_idle_timeout", "1\x00"),
        ("response_idle_timeout", [1]),
        ("tunnel_idle_timeout", 0.01),
        ("tunnel_idle_timeout", 1e9),
        ("tunnel_idle_timeout", "\x00"),
        ("max_tunnels", -1),
        ("max_tunnels", 1_000_001),
        ("max_tunnels", 2.5),
        ("max_tunnels", "2\x00"),
        ("max_tunnels", {"n": 2}),
    ],
)
def test_limits_out_of_range_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as refused:
        create(**{field: value})
    assert refused.value.errors()[0]["loc"] == (field,)


def test_nan_in_a_json_body_is_refused() -> None:
    # Python's JSON parser (the API's) reads NaN and Infinity literals
    for literal in ("NaN", "Infinity", "-Infinity"):
        body = json.loads('{"image": "img", "response_idle_timeout": ' + literal + "}")
        with pytest.raises(ValidationError):
            ReleaseCreate.model_validate(body)


@pytest.mark.parametrize(
    ("asked", "current", "expected"),
    [
        (None, None, None),  # not named, never set: the load balancers' own
        (None, 30.0, 30.0),  # not named: the current release's
        (0, 30.0, None),  # 0 clears
        (0.0, None, None),
        (90.0, 30.0, 90.0),
        (5, None, 5),
        (None, 7, 7),
    ],
)
def test_a_deploy_inherits_names_or_clears_a_limit(
    asked: float | None, current: float | None, expected: float | None
) -> None:
    assert inherited_limit(asked, current) == expected


def _rows(**limits: Any) -> RouteRows:
    env = uuid.uuid4()
    return RouteRows(
        version=3,
        domains=[
            DomainBinding(
                host="app.example.com",
                deployment_id=None,
                project_environment_id=env,
                release_id=uuid.uuid4(),
                path_rate_limits=[{"path_prefix": "/api", "rps": 5.0}],
                **limits,
            ),
            DomainBinding(host="old.example.com", deployment_id=uuid.uuid4()),
        ],
        instances=[
            RunningInstance(
                id=uuid.uuid4(),
                deployment_id=None,
                ip_address="10.0.0.5",
                port=8080,
                project_environment_id=env,
                routable=True,
            )
        ],
    )


def test_the_route_table_carries_the_current_releases_limits() -> None:
    table = route_table(_rows(response_idle_timeout=300.0, tunnel_idle_timeout=45.0, max_tunnels=2))
    app = [r for r in table.routes if r.host == "app.example.com"]
    assert [r.path_prefix for r in app] == ["/", "/api"]
    for route in app:  # a path rate limit's route is the same app's: the same limits
        assert (route.response_idle_timeout, route.tunnel_idle_timeout, route.max_tunnels) == (
            300.0,
            45.0,
            2,
        )
    (old,) = [r for r in table.routes if r.host == "old.example.com"]
    assert all(getattr(old, f) is None for f in LIMITS)
    # what the load balancers read back: the same values
    again = type(table).model_validate_json(table.model_dump_json())
    assert again == table


def test_a_release_without_limits_gives_routes_none() -> None:
    table = route_table(_rows())
    assert all(getattr(r, f) is None for r in table.routes for f in LIMITS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_idle_timeout", 0),
        ("response_idle_timeout", -2),
        ("response_idle_timeout", float("nan")),
        ("tunnel_idle_timeout", 0),
        ("tunnel_idle_timeout", 86401),
        ("max_tunnels", 0),
    ],
)
def test_a_route_table_with_a_bad_limit_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Route.model_validate({"host": "a.test", "backends": [], field: value})
