"""``zeitwork dev``'s image registry: its config, its child spec, the variable it sets."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.registry import free_port
from zeitwork.cli.dev_cmd import preflight
from zeitwork.cli.dev_plan import (
    REGISTRY,
    DevConfig,
    DevPorts,
    agent_spec,
    base_environment,
    operator_spec,
    registry_config,
    registry_spec,
    summary,
)

CONFIG = DevConfig(data_dir=Path("/var/tmp/zw"), ports=DevPorts(registry=1084))


def test_operator_and_agent_get_the_local_registry() -> None:
    base = base_environment({"PATH": "/usr/bin", "REGISTRY_HTTP_ADDR": "0.0.0.0:1"}, CONFIG)
    assert operator_spec(CONFIG, base).env["ZEITWORK_REGISTRY_URL"] == "http://127.0.0.1:1084"
    agent = agent_spec(CONFIG, base, join_token="j")
    assert agent.env["ZEITWORK_REGISTRY_URL"] == "http://127.0.0.1:1084"
    spec = registry_spec(CONFIG, base)
    assert spec.name == REGISTRY
    assert spec.argv == ("docker-registry", "serve", "/var/tmp/zw/registry/config.yml")
    assert spec.ready_url == "http://127.0.0.1:1084/v2/"
    assert "REGISTRY_HTTP_ADDR" not in spec.env  # it would override the config file


def test_a_registry_named_by_the_user_is_used_and_none_is_run() -> None:
    config = DevConfig(data_dir=Path("/d"), external_registry="https://reg.example.com")
    assert not config.runs_registry
    base = base_environment({}, config)
    assert base["ZEITWORK_REGISTRY_URL"] == "https://reg.example.com"
    assert ("--registry-port", "127.0.0.1", 8084) not in config.ports.listeners(
        "127.0.0.1", registry=False
    )
    text = summary(config, admin_token_source="x")
    assert "reg.example.com/myapp:v2" in text and "not run by dev" in text


def test_the_registry_listens_on_loopback_even_when_dev_listens_everywhere() -> None:
    listeners = DevPorts(registry=1084).listeners("0.0.0.0")
    assert ("--registry-port", "127.0.0.1", 1084) in listeners
    assert "addr: 127.0.0.1:8084" in registry_config(DevConfig(data_dir=Path("/d"), host="::"))
    assert DevPorts(registry=8080).clashes() == [8080]
    assert "draintimeout: 5s" in registry_config(CONFIG)  # SIGTERM is a clean exit
    assert "secret: abc" in registry_config(CONFIG, secret="abc")


def test_summary_says_how_to_push_and_deploy_by_reference() -> None:
    text = summary(CONFIG, admin_token_source="x")
    assert "docker://127.0.0.1:1084/myapp:v2" in text
    assert "zeitwork deploy --app myapp --image 127.0.0.1:1084/myapp:v2" in text


def test_preflight_names_a_missing_registry_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name: None if name == "docker-registry" else real(name)
    )
    if real("runc") is None or real("umoci") is None:
        pytest.skip("runc and umoci are needed to get past the earlier checks")
    problem = preflight(euid=0, runtime="runc", registry=True)
    assert problem is not None and "apt-get install docker-registry" in problem
    assert preflight(euid=0, runtime="runc", registry=False) is None


@pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry missing")
def test_the_generated_config_runs_the_real_registry(tmp_path: Path) -> None:
    config = DevConfig(data_dir=tmp_path, ports=DevPorts(registry=free_port()))
    config.registry_dir.mkdir()
    config.registry_config_file.write_text(registry_config(config, secret="s"))
    spec = registry_spec(config, {"PATH": "/usr/bin:/bin"})
    process = subprocess.Popen(
        spec.argv, env=dict(spec.env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(spec.ready_url, timeout=1) as answer:
                    assert answer.status == 200
                break
            except OSError:
                assert process.poll() is None, "docker-registry exited"
                assert time.monotonic() < deadline, "docker-registry did not answer"
                time.sleep(0.05)  # polling a probe with a deadline
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0  # drains and exits cleanly on SIGTERM
