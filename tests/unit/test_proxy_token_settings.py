"""The data-plane services read their operator token as ZEITWORK_PROXY_TOKEN (and the former
names), keep it secret in reprs, and refuse an operator URL without one."""

from __future__ import annotations

import pytest

from zeitwork.edge.settings import EdgeSettings
from zeitwork.lb.settings import LBSettings
from zeitwork.settings import ServiceSettings, SettingsError, parse_settings

NAMES = ("ZEITWORK_PROXY_TOKEN", "ZEITWORK_LB_TOKEN", "OPERATOR_TOKEN", "OPERATOR_URL")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)


def _token(settings: ServiceSettings) -> str | None:
    value = getattr(settings, "token", None) or getattr(settings, "operator_token", None)
    return None if value is None else value.get_secret_value()


@pytest.mark.parametrize(
    ("cls", "former"), [(LBSettings, "ZEITWORK_LB_TOKEN"), (EdgeSettings, "OPERATOR_TOKEN")]
)
def test_proxy_token_names(
    monkeypatch: pytest.MonkeyPatch, cls: type[ServiceSettings], former: str
) -> None:
    monkeypatch.setenv("OPERATOR_URL", "http://op:8080")
    with pytest.raises(SettingsError) as info:
        parse_settings(cls)
    assert "ZEITWORK_PROXY_TOKEN is required" in str(info.value)
    monkeypatch.setenv(former, "zw_old")
    assert _token(parse_settings(cls)) == "zw_old"
    monkeypatch.setenv("ZEITWORK_PROXY_TOKEN", "zw_new")
    settings = parse_settings(cls)
    assert _token(settings) == "zw_new"  # the new name wins
    assert "zw_new" not in repr(settings)
