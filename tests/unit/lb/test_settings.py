from __future__ import annotations

import pytest

from zeitwork.lb.settings import LBSettings
from zeitwork.settings import SettingsError, parse_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in (
        "PORT",
        "LB_BACKENDS",
        "OPERATOR_URL",
        "LB_WORKERS",
        "LB_ALGORITHM",
        "LB_HEALTH_PATH",
    ):
        monkeypatch.delenv(name, raising=False)
    s = parse_settings(LBSettings)
    assert s.port == 8082
    assert s.admin_host == "127.0.0.1"
    assert s.admin_port == 9082
    assert s.algorithm == "round-robin"
    assert s.health_path is None  # static backends: tcp; routes: their release's check
    assert s.workers >= 1


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"LB_ALGORITHM": "random"}, "LB_ALGORITHM"),
        ({"LB_BACKENDS": "10.0.0.1"}, "LB_BACKENDS"),
        ({"LB_TRUSTED_PROXIES": "nope"}, "LB_TRUSTED_PROXIES"),
        ({"LB_HEALTH_PATH": "health"}, "LB_HEALTH_PATH"),
        ({"LB_WORKERS": "0"}, "LB_WORKERS"),
        ({"OPERATOR_URL": "http://op:8080"}, "ZEITWORK_PROXY_TOKEN"),
    ],
)
def test_bad_values_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    monkeypatch.delenv("ZEITWORK_LB_TOKEN", raising=False)
    monkeypatch.delenv("ZEITWORK_PROXY_TOKEN", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        parse_settings(LBSettings)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_backend_list_and_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("LB_BACKENDS", " 10.0.0.1:80, [::1]:81 ,")
    monkeypatch.setenv("ZEITWORK_DATA_DIR", str(tmp_path))
    s = parse_settings(LBSettings)
    assert s.backend_list == ["10.0.0.1:80", "[::1]:81"]
    assert str(s.route_cache).startswith(str(tmp_path))


def test_health_path_is_an_explicit_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LB_HEALTH_PATH", "/healthz")
    assert parse_settings(LBSettings).health_path == "/healthz"
    monkeypatch.setenv("LB_HEALTH_PATH", "")
    assert parse_settings(LBSettings).health_path is None
