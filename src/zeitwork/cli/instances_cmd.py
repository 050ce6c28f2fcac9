"""``instances ls`` and ``instances rm``: the running copies of images."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer

from zeitwork.cli.console import echo_json, run_with_client, table
from zeitwork.cli.releases_cmd import JsonOption


def list_instances(
    deployment: Annotated[
        uuid.UUID | None, typer.Option("--deployment", help="only of this deployment")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List instances (not those marked for termination)."""
    found = run_with_client(lambda c: c.instances(deployment_id=deployment))
    if as_json:
        echo_json(found)
        return
    table(
        ("ID", "STATE", "DESIRED", "ADDRESS", "NODE", "DEPLOYMENT", "REASON"),
        [
            (
                str(i.id),
                i.state,
                i.desired_state,
                f"{i.ip_address}:{i.port}" if i.ip_address else "-",
                str(i.node_id)[:8] if i.node_id else "-",
                str(i.deployment_id)[:8] if i.deployment_id else "-",
                (i.reason or "")[:60],
            )
            for i in found
        ],
    )


def remove_instance(instance: Annotated[uuid.UUID, typer.Argument(help="instance id")]) -> None:
    """Stop and terminate an instance (its node stops it; routes drop it)."""
    done = run_with_client(lambda c: c.terminate_instance(instance))
    typer.echo(f"instance {done.id}: desired {done.desired_state} (now {done.state})")


def register(app: typer.Typer) -> None:
    instances = typer.Typer(help="Instances (running copies of images).", no_args_is_help=True)
    instances.command("ls")(list_instances)
    instances.command("rm")(remove_instance)
    app.add_typer(instances, name="instances")
