"""TAP devices for microVMs, through pyroute2 (netlink; the TAP itself via its ioctls).

A TAP is persistent, owned by the jail's uid/gid (so the unprivileged firecracker can attach
to it), enslaved to the node bridge and up. Kept here rather than in ``agent.network``
because the runtime layer sits below the agent and must not import it.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from zeitwork.core.errors import RuntimeFailure

TAP_PREFIX = "zwfc"


def _create(name: str, bridge: str, uid: int, gid: int) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge)
        if not found:
            raise RuntimeFailure(f"node bridge {bridge} does not exist")
        if ipr.link_lookup(ifname=name):
            ipr.link("del", ifname=name)
        ipr.link(
            "add",
            ifname=name,
            kind="tuntap",
            mode="tap",
            uid=uid,
            gid=gid,
            ifr={"no_pi": True, "one_queue": False, "vnet_hdr": True, "multi_queue": False},
        )
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, master=found[0], state="up")


def _delete(name: str) -> bool:
    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                return False
            raise
    return True


def _list(prefix: str) -> list[str]:
    """TAP devices named like ours: the prefix, 15 characters, and a TUN/TAP device (so a
    bridge or veth that happens to share the prefix is never taken for a stray TAP)."""
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return sorted(
        n
        for n in names
        if isinstance(n, str)
        and n.startswith(prefix)
        and len(n) == 15
        and os.path.exists(f"/sys/class/net/{n}/tun_flags")
    )


async def create_tap(name: str, *, bridge: str, uid: int, gid: int) -> None:
    try:
        await asyncio.to_thread(_create, name, bridge, uid, gid)
    except (NetlinkError, OSError) as exc:
        raise RuntimeFailure(f"creating TAP {name} on {bridge} failed: {exc}") from exc


async def delete_tap(name: str) -> bool:
    """Delete ``name``; False when it did not exist (idempotent)."""
    try:
        return await asyncio.to_thread(_delete, name)
    except (NetlinkError, OSError) as exc:
        raise RuntimeFailure(f"deleting TAP {name} failed: {exc}") from exc


async def list_taps(prefix: str = TAP_PREFIX) -> Sequence[str]:
    return await asyncio.to_thread(_list, prefix)
