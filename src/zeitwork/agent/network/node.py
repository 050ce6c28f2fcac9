"""The node's network as one object: bridge, IPAM, per-instance namespaces, NAT, routes.

The only place in Zeitwork that changes links and firewall rules. Blocking netlink work
runs in worker threads; every multi-step change undoes its earlier steps when a later one
fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zeitwork.agent.network import links, netns, nft
from zeitwork.agent.network.ipam import IpamFile
from zeitwork.core.errors import RuntimeFailure
from zeitwork.core.files import atomic_write_text
from zeitwork.observability import get_logger
from zeitwork.runtime.base import NetworkAttachment

log = get_logger(__name__)

VETH_PREFIX = "zwv"


@dataclass(frozen=True, slots=True)
class PeerRoute:
    """Another node's instance subnet and the address of that node (the next hop)."""

    subnet: str
    via: str

    @classmethod
    def parse(cls, text: str) -> PeerRoute:
        """``10.88.1.0/24=192.168.1.12`` (subnet=node address)."""
        subnet, sep, via = text.partition("=")
        if not sep:
            raise ValueError(f"peer route {text!r} must look like SUBNET=NODE_IP")
        ipaddress.IPv4Network(subnet.strip())
        ipaddress.IPv4Address(via.strip())
        return cls(subnet=subnet.strip(), via=via.strip())


def conflicts(subnet: str, networks: Sequence[tuple[str, str]], *, bridge: str) -> list[str]:
    """Host addresses (other than on our bridge) whose networks overlap the node subnet
    (pure). Using such a subnet would cut the host off from part of its own network."""
    ours = ipaddress.IPv4Network(subnet)
    clashes = []
    for ifname, cidr in networks:
        if ifname == bridge:
            continue
        network = ipaddress.IPv4Interface(cidr).network
        if network.overlaps(ours) and not network.is_loopback:
            clashes.append(f"{cidr} on {ifname}")
    return clashes


@dataclass(frozen=True, slots=True)
class PeerPlan:
    """What converging the operator's peer routes changes (``plan_peers``)."""

    replace: list[PeerRoute]
    delete: list[str]
    managed: list[PeerRoute]


def plan_peers(
    *,
    wanted: Sequence[PeerRoute],
    installed: Sequence[PeerRoute],
    static: Sequence[PeerRoute],
    own_subnet: str,
) -> PeerPlan:
    """Routes to add or change and to delete so that the routes the agent manages for the
    operator's peers are ``wanted`` (pure). Static routes (``ZEITWORK_PEER_ROUTES``) win
    over the operator's for the same subnet and are never deleted; a peer subnet that
    overlaps the node's own is ignored (a bad record must not cut the node off)."""
    own = ipaddress.IPv4Network(own_subnet)
    pinned = {r.subnet for r in static}
    managed: dict[str, PeerRoute] = {}
    for route in wanted:
        if route.subnet in pinned or ipaddress.IPv4Network(route.subnet).overlaps(own):
            continue
        managed[route.subnet] = route
    before = {r.subnet: r for r in installed}
    replace = [r for subnet, r in managed.items() if before.get(subnet) != r]
    delete = [subnet for subnet in before if subnet not in managed and subnet not in pinned]
    return PeerPlan(replace=replace, delete=sorted(delete), managed=list(managed.values()))


def veth_name(instance_id: uuid.UUID) -> str:
    return VETH_PREFIX + instance_id.hex[:12]  # 15 characters: the kernel's IFNAMSIZ - 1


class NodeNetwork:
    def __init__(
        self,
        *,
        bridge: str,
        subnet: str,
        state_dir: Path,
        nft_table: str = "zeitwork",
        peer_routes: Sequence[PeerRoute] = (),
        nat: bool = True,
    ) -> None:
        self.bridge = bridge
        self.subnet = subnet
        self.state_dir = state_dir
        self.netns_dir = state_dir / "netns"
        self.nft_table = nft_table
        self.peer_routes = list(peer_routes)
        self.nat = nat
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ipam = IpamFile(path=state_dir / "ipam.json", subnet=subnet)
        self._lock = asyncio.Lock()
        self._peers_path = state_dir / "peers.json"
        self._peers_lock = asyncio.Lock()

    @property
    def gateway(self) -> str:
        return str(self.ipam.state.gateway)

    def netns_path(self, instance_id: uuid.UUID) -> Path:
        return self.netns_dir / instance_id.hex

    async def setup(self) -> None:
        """Bridge with the gateway address, forwarding, NAT table, routes to peers."""
        try:
            clashes = conflicts(
                self.subnet, await asyncio.to_thread(links.host_networks), bridge=self.bridge
            )
            if clashes:
                raise RuntimeFailure(
                    f"node subnet {self.subnet} overlaps the host's "
                    + ", ".join(clashes)
                    + "; choose another ZEITWORK_NODE_SUBNET"
                )
            await asyncio.to_thread(
                links.ensure_bridge,
                self.bridge,
                address=self.gateway,
                prefix_len=self.ipam.state.prefix_len,
            )
            await asyncio.to_thread(links.enable_ip_forwarding)
            for route in self.peer_routes:
                await asyncio.to_thread(links.replace_route, route.subnet, via=route.via)
        except OSError as exc:
            raise RuntimeFailure(f"node network set-up failed: {exc}") from exc
        if self.nat:
            await nft.apply_ruleset(
                nft.render_ruleset(table=self.nft_table, subnet=self.subnet, bridge=self.bridge)
            )
        log.info("network.ready", bridge=self.bridge, subnet=self.subnet, gateway=self.gateway)

    def installed_peers(self) -> list[PeerRoute]:
        """The operator's peer routes this agent installed (kept across its restarts)."""
        try:
            raw = json.loads(self._peers_path.read_text())
            return [PeerRoute(subnet=r["subnet"], via=r["via"]) for r in raw]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("network.peers_unreadable", path=str(self._peers_path), error=str(exc))
            return []

    async def converge_peers(self, wanted: Sequence[PeerRoute]) -> PeerPlan:
        """Make the routes to other nodes' subnets those the operator sent: add or change
        what is missing, delete what is no longer wanted (static routes stay)."""
        async with self._peers_lock:
            installed = self.installed_peers()
            plan = plan_peers(
                wanted=wanted, installed=installed, static=self.peer_routes, own_subnet=self.subnet
            )
            done = {r.subnet: r for r in installed}
            failed: list[str] = []
            try:
                # One bad peer (an unroutable address) must not keep the others' routes out:
                # each change is tried on its own, failures are logged and reported together.
                for route in plan.replace:
                    try:
                        await asyncio.to_thread(links.replace_route, route.subnet, via=route.via)
                    except OSError as exc:
                        failed.append(f"{route.subnet} via {route.via}: {exc}")
                        log.warning(
                            "network.peer_route_failed",
                            subnet=route.subnet,
                            via=route.via,
                            error=str(exc),
                        )
                        continue
                    done[route.subnet] = route
                    log.info("network.peer_route_set", subnet=route.subnet, via=route.via)
                for subnet in plan.delete:
                    try:
                        await asyncio.to_thread(links.delete_route, subnet)
                    except OSError as exc:
                        failed.append(f"delete {subnet}: {exc}")
                        log.warning("network.peer_route_failed", subnet=subnet, error=str(exc))
                        continue
                    done.pop(subnet, None)
                    log.info("network.peer_route_removed", subnet=subnet)
            finally:
                await asyncio.to_thread(self._save_peers, list(done.values()))
            if failed:
                raise RuntimeFailure("peer route change failed: " + "; ".join(failed))
            return plan

    def _save_peers(self, routes: list[PeerRoute]) -> None:
        atomic_write_text(
            self._peers_path, json.dumps([{"subnet": r.subnet, "via": r.via} for r in routes])
        )

    async def teardown(self) -> None:
        """Remove the bridge, routes and NAT table (tests and uninstall; not on restart)."""
        for route in [*self.peer_routes, *self.installed_peers()]:
            await asyncio.to_thread(links.delete_route, route.subnet)
        if self.nat:
            await nft.delete_table(self.nft_table)
        await asyncio.to_thread(links.delete_link, self.bridge)

    def attachment(self, instance_id: uuid.UUID) -> NetworkAttachment | None:
        address = self.ipam.state.allocations.get(str(instance_id))
        if address is None:
            return None
        return NetworkAttachment(
            bridge=self.bridge,
            address=str(address),
            prefix_len=self.ipam.state.prefix_len,
            gateway=self.gateway,
            netns=str(self.netns_path(instance_id)),
        )

    async def attach(self, instance_id: uuid.UUID) -> NetworkAttachment:
        """An address, a namespace and a veth on the bridge for the instance."""
        async with self._lock:
            address = self.ipam.allocate(str(instance_id))
        path = self.netns_path(instance_id)
        host_ifname = veth_name(instance_id)
        try:
            await asyncio.to_thread(self._plumb, path, host_ifname, str(address))
        except OSError as exc:
            async with self._lock:
                self.ipam.release(str(instance_id))
            raise RuntimeFailure(f"network attach failed: {exc}") from exc
        attachment = self.attachment(instance_id)
        assert attachment is not None  # allocated above under the lock
        return attachment

    def _plumb(self, path: Path, host_ifname: str, address: str) -> None:
        if path.exists():  # leftovers of an earlier, interrupted attempt
            links.delete_link(host_ifname)
            netns.remove(path)
        netns.create(path)
        try:
            links.attach_instance(
                netns_path=path,
                host_ifname=host_ifname,
                bridge=self.bridge,
                address=address,
                prefix_len=self.ipam.state.prefix_len,
                gateway=self.gateway,
            )
        except BaseException:
            links.delete_link(host_ifname)
            netns.remove(path)
            raise

    async def detach(self, instance_id: uuid.UUID) -> None:
        """Remove the veth and namespace, release the address (idempotent)."""
        path = self.netns_path(instance_id)
        await asyncio.to_thread(self._unplumb, path, veth_name(instance_id))
        async with self._lock:
            self.ipam.release(str(instance_id))

    @staticmethod
    def _unplumb(path: Path, host_ifname: str) -> None:
        with contextlib.suppress(OSError):
            links.delete_link(host_ifname)
        netns.remove(path)

    async def cleanup(self, *, keep: set[uuid.UUID]) -> list[str]:
        """Remove namespaces, veths and addresses of ours that belong to no kept instance."""
        keep_hex = {i.hex for i in keep}
        keep_veth = {veth_name(i) for i in keep}
        cleaned: list[str] = []
        if self.netns_dir.exists():
            for path in sorted(self.netns_dir.iterdir()):
                if path.name not in keep_hex:
                    await asyncio.to_thread(netns.remove, path)
                    cleaned.append(f"netns {path.name}")
        ours = await asyncio.to_thread(links.links_with_prefix, VETH_PREFIX, master=self.bridge)
        for name in ours:
            if name not in keep_veth:
                await asyncio.to_thread(links.delete_link, name)
                cleaned.append(f"veth {name}")
        async with self._lock:
            for owner in self.ipam.retain({str(i) for i in keep}):
                cleaned.append(f"address of {owner}")
        for item in cleaned:
            log.info("network.stray_removed", item=item)
        return cleaned
