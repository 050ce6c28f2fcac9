"""``nodes ls``, ``nodes drain`` and ``nodes undrain``: the hosts running a node agent.

A drained node's instances are replaced elsewhere (each replacement healthy before the old
one stops) and it gets no new ones until it is undrained. NODE is a node's id, the start of
it, or its hostname.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from zeitwork.cli.console import echo_json, fail, run_with_client, table
from zeitwork.cli.releases_cmd import JsonOption
from zeitwork.clients.admin import AdminClient
from zeitwork.wire.admin import NodeOut

NodeArgument = Annotated[str, typer.Argument(metavar="NODE", help="node id or hostname")]


def pick_node(nodes: list[NodeOut], name: str) -> NodeOut:
    """The one node ``name`` designates: its id, a unique id prefix, or its hostname."""
    text = name.strip().lower()
    exact = [n for n in nodes if str(n.id) == text or n.hostname.lower() == text]
    found = exact or [n for n in nodes if len(text) >= 4 and str(n.id).startswith(text)]
    if not found:
        raise fail(f"no node {name} (zeitwork nodes ls)")
    if len(found) > 1:
        raise fail(f"{name} names {len(found)} nodes; give its id")
    return found[0]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def register(app: typer.Typer) -> None:
    nodes = typer.Typer(help="Nodes (hosts running a node agent).", no_args_is_help=True)

    @nodes.command("ls")
    def nodes_ls(as_json: JsonOption = False) -> None:
        """List nodes."""
        found = run_with_client(lambda c: c.nodes())
        if as_json:
            echo_json(found)
            return
        table(
            ("ID", "HOSTNAME", "ADDRESS", "STATE", "RUNTIME", "VCPU", "MEMORY", "HEARTBEAT"),
            [
                (
                    str(n.id),
                    n.hostname,
                    n.ip_address,
                    n.state,
                    n.runtime or "-",
                    f"{n.resources.vcpu:g}",
                    f"{n.resources.memory} MiB",
                    _when(n.last_heartbeat_at),
                )
                for n in found
            ],
        )

    async def _drain(client: AdminClient, name: str, drain: bool) -> NodeOut:
        node = pick_node(await client.nodes(), name)
        if drain:
            return await client.drain_node(node.id)
        return await client.undrain_node(node.id)

    @nodes.command("drain")
    def nodes_drain(node: NodeArgument) -> None:
        """Move the node's instances to other nodes, health-gated, then stop them here."""
        done = run_with_client(lambda c: _drain(c, node, True))
        typer.echo(f"node {done.hostname} ({done.id}): {done.state}")

    @nodes.command("undrain")
    def nodes_undrain(node: NodeArgument) -> None:
        """Let the node take new instances again."""
        done = run_with_client(lambda c: _drain(c, node, False))
        typer.echo(f"node {done.hostname} ({done.id}): {done.state}")

    app.add_typer(nodes, name="nodes")
