"""The one wrapper around the ``nft`` command: Zeitwork's own table, replaced atomically.

The table (``ip zeitwork`` by default) masquerades traffic from the node subnet leaving it
(egress NAT), lets bridge traffic through the forward hook, and keeps instances away from
the node's own services (the agent API, an operator on the same host, ...): from the
bridge, the node accepts only replies to its own connections and ICMP. Rules are rendered by a pure
function and loaded in one ``nft -f -`` transaction that deletes and recreates the table, so
the ruleset is never half-applied and nothing outside our table is touched.
"""

from __future__ import annotations

import asyncio
import ipaddress

from zeitwork.core.errors import RuntimeFailure


def render_ruleset(*, table: str, subnet: str, bridge: str) -> str:
    """The nft script for one node (pure)."""
    network = ipaddress.IPv4Network(subnet)
    if not table.replace("_", "").isalnum():
        raise ValueError(f"invalid nft table name {table!r}")
    if not bridge.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"invalid bridge name {bridge!r}")
    return "\n".join(
        [
            f"table ip {table} {{}}",
            f"delete table ip {table}",
            f"table ip {table} {{",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    ip saddr {network} ip daddr != {network} oifname != "{bridge}" masquerade',
            "  }",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            f'    iifname "{bridge}" accept',
            f'    oifname "{bridge}" ct state established,related accept',
            f'    oifname "{bridge}" ip daddr {network} accept',
            "  }",
            "  chain input {",
            "    type filter hook input priority filter; policy accept;",
            f'    iifname "{bridge}" ct state established,related accept',
            f'    iifname "{bridge}" ip protocol icmp accept',
            f'    iifname "{bridge}" drop',
            "  }",
            "}",
            "",
        ]
    )


async def _nft(*args: str, stdin: bytes | None = None, binary: str = "nft") -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            binary,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise RuntimeFailure(f"{binary} is not installed") from exc
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise RuntimeFailure(f"nft {' '.join(args)}: {err.decode(errors='replace').strip()}")
    return out.decode()


async def apply_ruleset(script: str, *, binary: str = "nft") -> None:
    await _nft("-f", "-", stdin=script.encode(), binary=binary)


async def delete_table(table: str, *, binary: str = "nft") -> None:
    listing = await _nft("list", "tables", binary=binary)
    if f"table ip {table}" in listing.splitlines():
        await _nft("delete", "table", "ip", table, binary=binary)


async def list_table(table: str, *, binary: str = "nft") -> str:
    return await _nft("list", "table", "ip", table, binary=binary)
