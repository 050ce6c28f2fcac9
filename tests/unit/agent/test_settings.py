from __future__ import annotations

import pytest

from zeitwork.agent.settings import AgentSettings
from zeitwork.settings import SettingsError, parse_settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PORT",
        "ZEITWORK_RUNTIME",
        "ZEITWORK_BRIDGE",
        "OPERATOR_URL",
        "ZEITWORK_NODE_SUBNET",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = parse_settings(AgentSettings)
    assert settings.port == 8081
    assert settings.runtime == "auto"
    assert settings.bridge == "zwbr0"
    assert settings.oci_runtime == "runc"
    assert settings.heartbeat_interval == 10.0
    assert settings.operator_url is None
    assert settings.node_subnet is None  # the operator's, or 10.88.0.0/24 without one


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("ZEITWORK_RUNTIME", "docker", "ZEITWORK_RUNTIME"),
        ("ZEITWORK_OCI_RUNTIME", "podman", "ZEITWORK_OCI_RUNTIME"),
        ("ZEITWORK_NODE_SUBNET", "10.0.0.1/24", "ZEITWORK_NODE_SUBNET"),
        ("ZEITWORK_NODE_SUBNET", "10.0.0.0/30", "ZEITWORK_NODE_SUBNET"),
        ("ZEITWORK_BRIDGE", "a-very-long-bridge-name", "ZEITWORK_BRIDGE"),
        ("NODE_IP", "not-an-ip", "NODE_IP"),
        ("NODE_ID", "nope", "NODE_ID"),
        ("OPERATOR_URL", "ftp://x", "OPERATOR_URL"),
        ("ZEITWORK_PEER_ROUTES", "10.1.0.0/24", "ZEITWORK_PEER_ROUTES"),
        ("ZEITWORK_HEARTBEAT_INTERVAL", "0", "ZEITWORK_HEARTBEAT_INTERVAL"),
        ("ZEITWORK_AGENT_ADVERTISE_URL", "10.0.0.5:8081", "ZEITWORK_AGENT_ADVERTISE_URL"),
        ("ZEITWORK_AGENT_ADVERTISE_URL", "http://h:1/api", "ZEITWORK_AGENT_ADVERTISE_URL"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        parse_settings(AgentSettings)
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


def test_peer_routes_and_operator_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEITWORK_PEER_ROUTES", "10.1.0.0/24=192.168.5.2, 10.2.0.0/24=192.168.5.3")
    monkeypatch.setenv("OPERATOR_URL", "http://operator:8080/")
    settings = parse_settings(AgentSettings)
    assert settings.operator_url == "http://operator:8080"


def test_advertise_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZEITWORK_AGENT_ADVERTISE_URL", raising=False)
    assert parse_settings(AgentSettings).advertise_url is None
    monkeypatch.setenv("ZEITWORK_AGENT_ADVERTISE_URL", "https://node-1.internal:8443/")
    assert parse_settings(AgentSettings).advertise_url == "https://node-1.internal:8443"


@pytest.mark.parametrize(
    ("bridge", "table", "expected"),
    [
        ("zwbr0", None, "zeitwork"),
        ("zwt-ab12", None, "zeitwork_zwt_ab12"),
        ("zwdev0", "", "zeitwork_zwdev0"),
        ("zwdev0", "mine", "mine"),
    ],
)
def test_the_nft_table_follows_the_bridge_unless_set(
    monkeypatch: pytest.MonkeyPatch, bridge: str, table: str | None, expected: str
) -> None:
    monkeypatch.setenv("ZEITWORK_BRIDGE", bridge)
    if table is None:
        monkeypatch.delenv("ZEITWORK_NFT_TABLE", raising=False)
    else:
        monkeypatch.setenv("ZEITWORK_NFT_TABLE", table)
    assert parse_settings(AgentSettings).nft_table_name == expected
