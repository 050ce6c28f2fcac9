"""``zeitwork dev``'s builder: its child spec (argv, environment, health URL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.cli.dev_plan import BUILDER, DevConfig, builder_spec, summary

CONFIG = DevConfig(data_dir=Path("/var/tmp/zw"), host="127.0.0.1", python="/venv/bin/python")


def test_builder_spec_runs_zeitwork_builder_with_its_own_token() -> None:
    spec = builder_spec(CONFIG, {"PATH": "/usr/bin"}, builder_token="zw_builder")
    assert spec.name == BUILDER
    assert spec.argv == ("/venv/bin/python", "-m", "zeitwork", "builder")
    assert spec.env["ZEITWORK_BUILDER_TOKEN"] == "zw_builder"
    assert spec.env["OPERATOR_URL"] == CONFIG.operator_url
    assert spec.env["BUILDER_WORK_DIR"] == "/var/tmp/zw/builder"
    assert spec.env["HOST"] == "127.0.0.1" and spec.env["PORT"] == "9085"
    assert spec.ready_url == "http://127.0.0.1:9085/health"
    assert "127.0.0.1:9085" in summary(CONFIG, admin_token_source="x")


def test_builder_spec_hands_the_host_ca_bundle_to_run_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zeitwork.cli.dev_plan as plan

    bundle = tmp_path / "ca.crt"
    monkeypatch.setattr(plan, "HOST_CA_BUNDLE", bundle)
    assert "BUILDER_CA_BUNDLE" not in builder_spec(CONFIG, {}, builder_token="t").env
    bundle.write_text("pem")
    assert builder_spec(CONFIG, {}, builder_token="t").env["BUILDER_CA_BUNDLE"] == str(bundle)
    mine = builder_spec(CONFIG, {"BUILDER_CA_BUNDLE": "/x.pem"}, builder_token="t")
    assert mine.env["BUILDER_CA_BUNDLE"] == "/x.pem"  # the user's own wins
