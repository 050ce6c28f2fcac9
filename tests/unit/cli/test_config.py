"""Where the user verbs find the operator and their token."""

from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.cli.config import CliSettings, TokenMissing
from zeitwork.settings import SettingsError, parse_settings


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> CliSettings:
    for name in ("OPERATOR_URL", "ZEITWORK_TOKEN", "ZEITWORK_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parse_settings(CliSettings)


def test_token_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("from-file\n")
    settings = _settings(monkeypatch, ZEITWORK_TOKEN="from-env", ZEITWORK_DATA_DIR=str(tmp_path))
    assert settings.admin_token() == "from-env"
    assert settings.operator_url == "http://127.0.0.1:8080"


def test_token_from_the_operators_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("zw_secret\n")
    settings = _settings(
        monkeypatch, ZEITWORK_DATA_DIR=str(tmp_path), OPERATOR_URL="http://op:8080/"
    )
    assert settings.admin_token() == "zw_secret"
    assert settings.operator_url == "http://op:8080"


def test_missing_or_empty_token_file_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = _settings(monkeypatch, ZEITWORK_DATA_DIR=str(tmp_path))
    with pytest.raises(TokenMissing, match="set ZEITWORK_TOKEN"):
        settings.admin_token()
    (tmp_path / "admin-token").write_text("\n")
    with pytest.raises(TokenMissing, match="is empty"):
        settings.admin_token()


def test_a_bad_operator_url_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match="OPERATOR_URL"):
        _settings(monkeypatch, OPERATOR_URL="op:8080")
