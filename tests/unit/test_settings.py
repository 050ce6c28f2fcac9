from __future__ import annotations

import subprocess
import sys

import pytest

from zeitwork.settings import (
    LogLevel,
    ServiceEnvironment,
    ServiceSettings,
    SettingsError,
    parse_settings,
)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PORT", "LOG_LEVEL", "ENVIRONMENT"):
        monkeypatch.delenv(var, raising=False)
    s = parse_settings(ServiceSettings)
    assert s.port == 8080
    assert s.log_level is LogLevel.INFO
    assert s.environment is ServiceEnvironment.DEVELOPMENT


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9999")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.setenv("ENVIRONMENT", "production")
    s = parse_settings(ServiceSettings)
    assert (s.port, s.log_level, s.environment) == (
        9999,
        LogLevel.WARN,
        ServiceEnvironment.PRODUCTION,
    )


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("PORT", "http", "PORT"),
        ("LOG_LEVEL", "loud", "LOG_LEVEL"),
        ("ENVIRONMENT", "x", "ENVIRONMENT"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        parse_settings(ServiceSettings)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_load_settings_exits_2_with_one_line() -> None:
    code = (
        "from zeitwork.settings import load_settings, ServiceSettings;"
        "load_settings(ServiceSettings)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={"PORT": "nope", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "PORT" in lines[0]
    assert "Traceback" not in proc.stderr
