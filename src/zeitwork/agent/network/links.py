"""Links, addresses and routes over netlink (pyroute2): the bridge, per-instance veths.

Blocking calls; the node network runs them in a worker thread. The ``ip`` command is never
used here (a netlink round trip costs well under a millisecond, ``ip`` ~ 10-25 ms).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from zeitwork.agent.network import netns


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def ensure_bridge(name: str, *, address: str, prefix_len: int) -> None:
    """Create the bridge if missing, give it ``address/prefix_len``, bring it up."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        if index is None:
            try:
                ipr.link("add", ifname=name, kind="bridge")
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
            index = _index(ipr, name)
            if index is None:
                raise OSError(errno.ENODEV, f"bridge {name} vanished after creation")
        present = {
            (msg.get_attr("IFA_ADDRESS"), msg["prefixlen"])
            for msg in ipr.get_addr(index=index, family=2)
        }
        if (address, prefix_len) not in present:
            try:
                ipr.addr("add", index=index, address=address, prefixlen=prefix_len)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise
        ipr.link("set", index=index, state="up")


def host_networks() -> list[tuple[str, str]]:
    """(interface, network in CIDR) of every IPv4 address in this namespace."""
    found: list[tuple[str, str]] = []
    with IPRoute() as ipr:
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        for message in ipr.get_addr(family=2):
            address = message.get_attr("IFA_ADDRESS")
            if address:
                found.append(
                    (names.get(int(message["index"]), "?"), f"{address}/{message['prefixlen']}")
                )
    return found


def delete_link(name: str) -> bool:
    """Delete a link by name; False when it was not there."""
    with IPRoute() as ipr:
        index = _index(ipr, name)
        if index is None:
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code == errno.ENODEV:
                return False
            raise
        return True


def links_with_prefix(prefix: str, *, master: str | None = None) -> list[str]:
    """Links named ``prefix...``; with ``master``, only those enslaved to that bridge (so
    that an agent never removes another agent's veths on the same host)."""
    with IPRoute() as ipr:
        master_index = _index(ipr, master) if master is not None else None
        if master is not None and master_index is None:
            return []
        names = [
            str(link.get_attr("IFLA_IFNAME"))
            for link in ipr.get_links()
            if master_index is None or link.get_attr("IFLA_MASTER") == master_index
        ]
    return sorted(n for n in names if n.startswith(prefix))


def attach_instance(
    *,
    netns_path: Path,
    host_ifname: str,
    bridge: str,
    address: str,
    prefix_len: int,
    gateway: str,
    mac: str | None = None,
) -> None:
    """Create a veth pair: ``host_ifname`` on the bridge, ``eth0`` inside the namespace with
    the instance's address and a default route via the bridge."""
    ns_fd = os.open(netns_path, os.O_RDONLY)
    try:
        with IPRoute() as ipr:
            bridge_index = _index(ipr, bridge)
            if bridge_index is None:
                raise OSError(errno.ENODEV, f"bridge {bridge} does not exist")
            if _index(ipr, host_ifname) is not None:
                ipr.link("del", ifname=host_ifname)
            peer: dict[str, object] = {"ifname": "eth0", "net_ns_fd": ns_fd}
            if mac:
                peer["address"] = mac
            ipr.link("add", ifname=host_ifname, kind="veth", peer=peer)
            index = _index(ipr, host_ifname)
            if index is None:
                raise OSError(errno.ENODEV, f"veth {host_ifname} vanished after creation")
            ipr.link("set", index=index, master=bridge_index, state="up")
            # the host may still hold the MAC of an earlier instance at this address (a
            # restart on a fresh attachment): without this, packets go to that MAC until
            # the neighbour entry times out (seconds)
            try:
                ipr.neigh("del", dst=address, ifindex=bridge_index)
            except NetlinkError as exc:
                if exc.code not in (errno.ENOENT, errno.ESRCH):
                    raise
    finally:
        os.close(ns_fd)
    with netns.entered(netns_path), IPRoute() as inner:
        lo = _index(inner, "lo")
        if lo is not None:
            inner.link("set", index=lo, state="up")
        eth0 = _index(inner, "eth0")
        if eth0 is None:
            raise OSError(errno.ENODEV, "eth0 missing inside the instance namespace")
        inner.addr("add", index=eth0, address=address, prefixlen=prefix_len)
        inner.link("set", index=eth0, state="up")
        inner.route("add", dst="0.0.0.0/0", gateway=gateway)


def replace_route(destination: str, *, via: str) -> None:
    """Route ``destination`` via ``via``; a kernel refusal is an OSError naming both."""
    with IPRoute() as ipr:
        try:
            ipr.route("replace", dst=destination, gateway=via)
        except NetlinkError as exc:
            raise OSError(exc.code, f"route {destination} via {via}: {exc}") from exc


def delete_route(destination: str) -> None:
    with IPRoute() as ipr:
        try:
            ipr.route("del", dst=destination)
        except NetlinkError as exc:
            if exc.code not in (errno.ESRCH, errno.ENOENT):
                raise OSError(exc.code, f"delete route {destination}: {exc}") from exc


def enable_ip_forwarding() -> None:
    path = Path("/proc/sys/net/ipv4/ip_forward")
    if path.read_text().strip() != "1":
        path.write_text("1\n")
