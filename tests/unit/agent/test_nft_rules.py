from __future__ import annotations

import pytest

from zeitwork.agent.network.nft import render_ruleset
from zeitwork.agent.network.node import PeerRoute


def test_ruleset_replaces_only_our_table_and_masquerades_the_subnet() -> None:
    script = render_ruleset(table="zeitwork", subnet="10.88.0.0/24", bridge="zwbr0")
    lines = script.splitlines()
    assert lines[:3] == ["table ip zeitwork {}", "delete table ip zeitwork", "table ip zeitwork {"]
    assert (
        '    ip saddr 10.88.0.0/24 ip daddr != 10.88.0.0/24 oifname != "zwbr0" masquerade' in lines
    )
    assert 'iifname "zwbr0" accept' in script


@pytest.mark.parametrize(
    ("table", "subnet", "bridge"),
    [("bad table", "10.0.0.0/24", "br"), ("t", "10.0.0.1/24", "br"), ("t", "10.0.0.0/24", "b;r")],
)
def test_ruleset_refuses_bad_names(table: str, subnet: str, bridge: str) -> None:
    with pytest.raises(ValueError):
        render_ruleset(table=table, subnet=subnet, bridge=bridge)


def test_peer_route_parsing() -> None:
    assert PeerRoute.parse(" 10.1.2.0/24 = 192.168.0.2 ") == PeerRoute("10.1.2.0/24", "192.168.0.2")
    for bad in ("10.1.2.0/24", "10.1.2.0/24=nope", "x=192.168.0.1"):
        with pytest.raises(ValueError):
            PeerRoute.parse(bad)


def test_instances_cannot_open_connections_to_the_node_itself() -> None:
    script = render_ruleset(table="zeitwork", subnet="10.88.0.0/24", bridge="zwbr0")
    chain = script[script.index("chain input") :]
    lines = [line.strip() for line in chain.splitlines()[:6]]
    assert lines[1].startswith("type filter hook input")
    assert lines[2:5] == [
        'iifname "zwbr0" ct state established,related accept',
        'iifname "zwbr0" ip protocol icmp accept',
        'iifname "zwbr0" drop',
    ]


def test_subnet_conflicts_with_host_networks() -> None:
    from zeitwork.agent.network.node import conflicts

    host = [
        ("lo", "127.0.0.1/8"),
        ("eth0", "192.168.1.10/24"),
        ("wg0", "10.88.0.77/32"),
        ("zwbr0", "10.88.0.1/24"),
        ("eth1", "10.0.0.5/8"),
    ]
    assert conflicts("10.88.0.0/24", host, bridge="zwbr0") == [
        "10.88.0.77/32 on wg0",
        "10.0.0.5/8 on eth1",
    ]
    assert conflicts("172.30.0.0/24", host, bridge="zwbr0") == []
    assert conflicts("127.0.0.0/24", [("lo", "127.0.0.1/8")], bridge="zwbr0") == []
