"""``zeitwork deploy --backend-protocol``: sent in the release body, refused before any call
when unknown (against the scripted operator of the app-verb tests)."""

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


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeOperator]:
    with serving(FakeOperator()) as operator:
        monkeypatch.setenv("OPERATOR_URL", operator.url)
        monkeypatch.setenv("ZEITWORK_TOKEN", "zw_test")
        monkeypatch.setenv("ZEITWORK_DATA_DIR", str(tmp_path))
        yield operator


def test_backend_protocol_goes_in_the_release_body(fake: FakeOperator) -> None:
    fake.projects = [project("default")]
    fake.created = release(1, ReleaseState.PENDING)
    args = ["deploy", "--image", IMAGE, "--backend-protocol", "h2c", "--detach"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ((_, body),) = fake.calls("POST", "/releases")
    assert body["backend_protocol"] == "h2c"
    result = CliRunner().invoke(app, ["deploy", "--image", IMAGE, "--detach"])
    assert result.exit_code == 0, result.output
    _, (_, plain) = fake.calls("POST", "/releases")
    assert "backend_protocol" not in plain or plain["backend_protocol"] is None  # as now


def test_an_unknown_backend_protocol_is_refused_before_calling(fake: FakeOperator) -> None:
    result = CliRunner().invoke(app, ["deploy", "--image", IMAGE, "--backend-protocol", "h3"])
    assert result.exit_code == 2
    assert "--backend-protocol" in result.stderr
    assert fake.seen == []
