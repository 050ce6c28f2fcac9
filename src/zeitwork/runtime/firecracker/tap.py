"""TAP devices for microVMs, through pyroute2 (netlink; the TAP itself via its ioctls).

A TAP is persistent and owned by the jail's uid/gid (so the unprivileged firecracker can
attach to it). Two layouts:

- **in the instance's network namespace** (the agent prepared one: ``NetworkAttachment.netns``
  with a veth ``eth0`` whose host end is on the node bridge). Inside it, the TAP ``tap0`` and
  ``eth0`` are joined by a small bridge ``br0``, and ``eth0``'s address and routes are removed
  (the guest owns the address). The jailer joins that namespace (``--netns``), so firecracker
  sees no host interface. Path: guest eth0 - tap0 - br0 - eth0/veth - node bridge.
- **on the node bridge** (no namespace given): the TAP is enslaved to the bridge directly.

Kept here rather than in ``agent.network`` because the runtime layer sits below the agent and
must not import it; entering a namespace is done on the worker thread only (``setns``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from zeitwork.core.errors import RuntimeFailure

TAP_PREFIX = "zwfc"
NS_TAP = "tap0"
NS_BRIDGE = "br0"
NS_UPLINK = "eth0"
CLONE_NEWNET = 0x40000000
_TAP_FLAGS = {"no_pi": True, "one_queue": False, "vnet_hdr": True, "multi_queue": False}
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@contextlib.contextmanager
def _entered(netns: Path) -> Iterator[None]:
    """Run the body in the network namespace pinned at ``netns`` (this thread only)."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns, os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {netns} failed: {os.strerror(err)}")
        finally:
            os.close(target)
        try:
            yield
        finally:
            if _libc.setns(original, CLONE_NEWNET) != 0:  # pragma: no cover - cannot happen
                raise OSError(ctypes.get_errno(), "setns back to the agent's namespace failed")
    finally:
        os.close(original)


def _plumb_netns(netns: Path, uid: int, gid: int) -> None:
    with _entered(netns), IPRoute() as ipr:
        uplink = ipr.link_lookup(ifname=NS_UPLINK)
        if not uplink:
            raise RuntimeFailure(f"{NS_UPLINK} is missing in the instance namespace {netns}")
        for name in (NS_TAP, NS_BRIDGE):
            if ipr.link_lookup(ifname=name):
                ipr.link("del", ifname=name)
        # The guest owns the address: take it (and the routes through it) off the veth.
        with contextlib.suppress(NetlinkError):
            ipr.route("del", dst="0.0.0.0/0")
        ipr.flush_addr(index=uplink[0])
        ipr.link("add", ifname=NS_BRIDGE, kind="bridge")
        bridge = ipr.link_lookup(ifname=NS_BRIDGE)[0]
        ipr.link("add", ifname=NS_TAP, kind="tuntap", mode="tap", uid=uid, gid=gid, ifr=_TAP_FLAGS)
        for name in (NS_TAP, NS_UPLINK):
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, master=bridge, state="up")
        ipr.link("set", index=bridge, state="up")
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")


def _unplumb_netns(netns: Path) -> bool:
    if not netns.exists():
        return False
    removed = False
    try:
        with _entered(netns), IPRoute() as ipr:
            for name in (NS_TAP, NS_BRIDGE):
                if ipr.link_lookup(ifname=name):
                    ipr.link("del", ifname=name)
                    removed = True
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOENT):  # a leftover file, no namespace behind it
            return False
        raise
    return removed


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
            ifr=_TAP_FLAGS,
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


async def plumb_netns(netns: Path, *, uid: int, gid: int) -> str:
    """Put a TAP into the instance's namespace (see the module doc); returns its name."""
    try:
        await asyncio.to_thread(_plumb_netns, netns, uid, gid)
    except (NetlinkError, OSError) as exc:
        raise RuntimeFailure(f"setting up the TAP in {netns} failed: {exc}") from exc
    return NS_TAP


async def unplumb_netns(netns: Path) -> bool:
    """Remove the TAP and bridge from the namespace (idempotent; the agent owns the rest)."""
    try:
        return await asyncio.to_thread(_unplumb_netns, netns)
    except (NetlinkError, OSError) as exc:
        raise RuntimeFailure(f"removing the TAP in {netns} failed: {exc}") from exc


async def delete_tap(name: str) -> bool:
    """Delete ``name``; False when it did not exist (idempotent)."""
    try:
        return await asyncio.to_thread(_delete, name)
    except (NetlinkError, OSError) as exc:
        raise RuntimeFailure(f"deleting TAP {name} failed: {exc}") from exc


async def list_taps(prefix: str = TAP_PREFIX) -> Sequence[str]:
    return await asyncio.to_thread(_list, prefix)
