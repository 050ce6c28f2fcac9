"""Parsing and round-tripping the image config."""

from __future__ import annotations

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.images import ImageConfig, parse_image_config

RAW = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "User": "1000:1000",
        "ExposedPorts": {"8080": {}, "53/udp": {}, "443/tcp": {}},
        "Env": ["PATH=/bin", "X=a=b"],
        "Entrypoint": ["/app"],
        "Cmd": ["serve"],
        "WorkingDir": "/srv",
        "Labels": {"a": "b"},
        "StopSignal": "SIGINT",
    },
}


def test_parse():
    config = parse_image_config(RAW)
    assert config.entrypoint == ("/app",)
    assert config.cmd == ("serve",)
    assert config.env_map() == {"PATH": "/bin", "X": "a=b"}
    assert config.exposed_ports == ("53/udp", "443/tcp", "8080/tcp")
    assert config.tcp_ports() == [443, 8080]
    assert config.user == "1000:1000"
    assert config.working_dir == "/srv"
    assert config.stop_signal == "SIGINT"
    assert config.labels == {"a": "b"}


def test_round_trip():
    config = parse_image_config(RAW)
    assert ImageConfig.from_dict(config.to_dict()) == config


def test_minimal():
    config = parse_image_config({"architecture": "amd64", "os": "linux"})
    assert config == ImageConfig(architecture="amd64", os="linux")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": None}, "architecture"),
        ({"os": ""}, "os"),
        ({"config": []}, "config must be an object"),
        ({"config": {"Cmd": "serve"}}, "Cmd"),
        ({"config": {"Entrypoint": [1]}}, "Entrypoint"),
        ({"config": {"Env": ["=x"]}}, "KEY=value"),
        ({"config": {"ExposedPorts": {"http": {}}}}, "bad exposed port"),
        ({"config": {"ExposedPorts": {"70000/tcp": {}}}}, "out of range"),
        ({"config": {"ExposedPorts": {"80/quic": {}}}}, "bad exposed port"),
        ({"config": {"User": 1000}}, "User"),
        ({"config": {"Labels": {"a": 1}}}, "Labels"),
        ({"config": {"Cmd": ["a\x00b"]}}, "NUL"),
    ],
)
def test_invalid(change, message):
    with pytest.raises(InvalidInput, match=message):
        parse_image_config({**RAW, **change})
