"""``zeitwork deploy --response-idle-timeout --tunnel-idle-timeout --max-tunnels``: sent in the
release body, left out when not given (the current release's stay), refused before any call
when out of range, and refused without ``--image`` (a build's release keeps the settings)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unit.cli.fake_operator import FakeOperator, serving
from tests.unit.cli.wire_factories import project, release
from zeitwork.cli.main import app
from zeitwork.core.states import ReleaseState

IMAGE = "6f1c2b8e-0000-4000-8000-000000000000"
LIMITS = ("response_idle_timeout", "tunnel_idle_timeout", "max_tunnels")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOperator]:
    with serving(FakeOperator()) as operator:
        monkeypatch.setenv("OPERATOR_URL", operator.url)
        monkeypatch.setenv("ZEITWORK_TOKEN", "zw_test")
        monkeypatch.setenv("ZEITWORK_DATA_DIR", str(tmp_path))
        yield operator


def test_the_limits_go_in_the_release_body(fake: FakeOperator) -> None:
    fake.projects = [project("default")]
    fake.created = release(1, ReleaseState.PENDING)
    args = [
        "deploy",
        "--image",
        IMAGE,
        "--response-idle-timeout",
        "300",
        "--tunnel-idle-timeout",
        "45.5",
        "--max-tunnels",
        "2",
        "--detach",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ((_, body),) = fake.calls("POST", "/releases")
    assert [body[k] for k in LIMITS] == [300.0, 45.5, 2]
    result = CliRunner().invoke(app, ["deploy", "--image", IMAGE, "--max-tunnels", "0", "--detach"])
    assert result.exit_code == 0, result.output
    _, (_, cleared) = fake.calls("POST", "/releases")
    assert cleared["max_tunnels"] == 0  # 0 clears it on the operator
    assert cleared.get("response_idle_timeout") is None  # not given: as now


@pytest.mark.parametrize(
    "args",
    [
        ["--response-idle-timeout", "-1"],
        ["--response-idle-timeout", "0.5"],  # under a second
        ["--response-idle-timeout", "90000"],
        ["--tunnel-idle-timeout", "soon"],
        ["--max-tunnels", "-2"],
        ["--max-tunnels", "1.5"],
    ],
)
def test_a_limit_out_of_range_is_refused_before_calling(
    fake: FakeOperator, args: list[str]
) -> None:
    result = CliRunner().invoke(app, ["deploy", "--image", IMAGE, *args])
    assert result.exit_code == 2, result.output
    assert args[0].strip("-").replace("-", "_") in result.stderr.replace("-", "_")
    assert fake.seen == []


def test_the_limits_go_with_an_image_only(fake: FakeOperator, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["deploy", "--max-tunnels", "3", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--max-tunnels" in result.stderr
    assert fake.seen == []
