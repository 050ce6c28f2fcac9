"""User verbs fail with one line and a status, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zeitwork.cli.main import app


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("OPERATOR_URL", "ZEITWORK_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ZEITWORK_DATA_DIR", str(tmp_path))
    return tmp_path


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_token_is_exit_2_naming_the_file(env: Path) -> None:
    result = CliRunner().invoke(app, ["nodes", "ls"])
    assert result.exit_code == 2
    assert f"{env / 'admin-token'} does not exist" in result.output
    assert "Traceback" not in result.output


def test_unreachable_operator_is_exit_1_in_one_line(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZEITWORK_TOKEN", "zw_x")
    monkeypatch.setenv("OPERATOR_URL", f"http://127.0.0.1:{_closed_port()}")
    result = CliRunner().invoke(app, ["images", "ls"])
    assert result.exit_code == 1
    assert result.output.startswith("zeitwork: operator is unreachable")
    assert len(result.output.strip().splitlines()) == 1


def test_deploy_rejects_a_malformed_env_pair(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEITWORK_TOKEN", "zw_x")
    image = "6f1c2b8e-0000-4000-8000-000000000000"
    result = CliRunner().invoke(app, ["deploy", "--image", image, "--env", "NOEQUALS"])
    assert result.exit_code == 2
    assert "expected NAME=VALUE" in result.output


def test_help_lists_the_verbs() -> None:
    result = CliRunner().invoke(app, ["--help"])
    verbs = ("dev", "deploy", "images", "instances", "nodes", "demo", "releases", "rollback")
    for verb in (*verbs, "apps", "status", "scale", "env", "logs", "events"):
        assert verb in result.output


def test_demo_against_no_platform_is_one_line(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEITWORK_TOKEN", "zw_x")
    monkeypatch.setenv("OPERATOR_URL", f"http://127.0.0.1:{_closed_port()}")
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 1
    assert "zeitwork: operator is unreachable" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["limit", "a.test"], "give --rps, or --clear"),
        (["limit", "a.test", "--rps", "5", "--clear"], "give --rps, or --clear"),
        (["limit", "a.test", "--clear", "--burst", "3"], "--burst needs --rps"),
        (["policy", "a.test"], "give --clear, or at least one policy option"),
        (["policy", "a.test", "--clear", "--csp", "default-src 'self'"], "give --clear"),
        (["policy", "a.test", "--cors-credentials"], "--cors-credentials needs --cors-origin"),
    ],
)
def test_domain_verbs_check_their_options_before_calling(
    env: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.setenv("ZEITWORK_TOKEN", "zw_x")
    monkeypatch.setenv("OPERATOR_URL", f"http://127.0.0.1:{_closed_port()}")
    result = CliRunner().invoke(app, ["domains", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
