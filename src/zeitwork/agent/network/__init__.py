"""Node networking: IPAM, the bridge, per-instance namespaces and veths, NAT, routes.

The only package in Zeitwork that touches links and firewall rules.
"""

from __future__ import annotations

from zeitwork.agent.network.ipam import IpamFile, IpamState
from zeitwork.agent.network.node import NodeNetwork, PeerRoute, veth_name

__all__ = ["IpamFile", "IpamState", "NodeNetwork", "PeerRoute", "veth_name"]
