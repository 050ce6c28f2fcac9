"""Node networking: IPAM, the bridge, per-instance namespaces and veths, NAT, routes.

The only package in Zeitwork that touches links and firewall rules.
"""

from __future__ import annotations

from zeitwork.agent.network.ipam import IpamFile, IpamState
from zeitwork.agent.network.node import NodeNetwork, PeerPlan, PeerRoute, plan_peers, veth_name

__all__ = [
    "IpamFile",
    "IpamState",
    "NodeNetwork",
    "PeerPlan",
    "PeerRoute",
    "plan_peers",
    "veth_name",
]
