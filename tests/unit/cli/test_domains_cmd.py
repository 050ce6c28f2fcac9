"""The domain verbs' pure parts: the policy the options give, and how limits and targets read."""

from __future__ import annotations

import uuid

import pytest
import typer

from tests.unit.cli.wire_factories import domain
from zeitwork.cli.domains_cmd import edge_policy, limits_text, target_text
from zeitwork.wire.routes import PathRateLimit

_NONE = {"cors_origin": None, "cors_credentials": False, "csp": None, "frame_options": None}


def test_no_option_is_an_empty_policy() -> None:
    assert edge_policy(**_NONE, hsts_max_age=None) == {}


def test_every_option_lands_in_its_section() -> None:
    policy = edge_policy(
        cors_origin=["https://a.test", "https://*.b.test"],
        cors_credentials=True,
        csp="default-src 'self'",
        frame_options="DENY",
        hsts_max_age=0,
    )
    assert policy == {
        "cors": {"origins": ["https://a.test", "https://*.b.test"], "credentials": True},
        "headers": {
            "content_security_policy": "default-src 'self'",
            "frame_options": "DENY",
            "hsts_max_age": 0,
        },
    }


@pytest.mark.parametrize("off", ["off", "OFF", "Off"])
def test_frame_options_off_is_an_empty_value(off: str) -> None:
    policy = edge_policy(**{**_NONE, "frame_options": off}, hsts_max_age=None)
    assert policy == {"headers": {"frame_options": ""}}


def test_credentials_without_an_origin_is_a_usage_error() -> None:
    with pytest.raises(typer.Exit) as caught:
        edge_policy(**{**_NONE, "cors_credentials": True}, hsts_max_age=None)
    assert caught.value.exit_code == 2


def test_limits_text() -> None:
    assert limits_text(domain("a.test")) == "-"
    limited = domain(
        "a.test",
        rate_limit_rps=20.0,
        rate_limit_burst=40,
        path_rate_limits=[PathRateLimit(path_prefix="/login", rps=0.5)],
    )
    assert limits_text(limited) == "20/s (burst 40), /login 0.5/s"


def test_target_text_prefers_the_environment() -> None:
    env, dep = uuid.UUID(int=0xABCDEF12 << 96), uuid.UUID(int=0x12345678 << 96)
    assert target_text(domain("a.test")) == "-"
    assert target_text(domain("a.test", deployment_id=dep)) == "deployment 12345678"
    both = domain("a.test", project_environment_id=env, deployment_id=dep)
    assert target_text(both) == "environment abcdef12"
