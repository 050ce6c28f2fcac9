"""Converging the operator's peer routes (pure plan)."""

from __future__ import annotations

from zeitwork.agent.network import PeerRoute, plan_peers

R = PeerRoute
OWN = "10.88.0.0/24"


def test_adds_changes_and_removes_only_what_differs() -> None:
    installed = [R("10.88.1.0/24", "192.168.1.3"), R("10.88.2.0/24", "192.168.1.4")]
    wanted = [
        R("10.88.1.0/24", "192.168.1.3"),
        R("10.88.2.0/24", "192.168.1.9"),
        R("10.88.3.0/24", "192.168.1.5"),
    ]
    plan = plan_peers(wanted=wanted, installed=installed, static=[], own_subnet=OWN)
    assert plan.replace == [R("10.88.2.0/24", "192.168.1.9"), R("10.88.3.0/24", "192.168.1.5")]
    assert plan.delete == []
    gone = plan_peers(wanted=[], installed=plan.managed, static=[], own_subnet=OWN)
    assert gone.replace == [] and gone.delete == ["10.88.1.0/24", "10.88.2.0/24", "10.88.3.0/24"]
    assert gone.managed == []


def test_static_routes_win_and_own_subnet_is_never_routed() -> None:
    static = [R("10.88.1.0/24", "192.168.1.100")]
    wanted = [
        R("10.88.1.0/24", "192.168.1.3"),
        R("10.88.0.0/24", "192.168.1.7"),
        R("10.88.0.0/16", "192.168.1.8"),
    ]
    plan = plan_peers(
        wanted=wanted, installed=[R("10.88.1.0/24", "192.168.1.3")], static=static, own_subnet=OWN
    )
    assert plan.replace == [] and plan.managed == []
    assert plan.delete == []  # the static route for that subnet stays
