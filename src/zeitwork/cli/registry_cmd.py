"""``zeitwork registry login|logout|ls``: the credentials an app's private images are
pulled with (stored by the operator, sealed with its secrets key, never shown again).

    printf '%s' "$TOKEN" | zeitwork registry login myapp ghcr.io --username me --password-stdin
    zeitwork registry ls myapp
    zeitwork registry logout myapp ghcr.io

The password is read from standard input only (never an argument: it would be in the shell
history and in ``ps``), sent once, and never printed.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any
from urllib.parse import quote

import typer

from zeitwork.cli.console import fail, run_with_client, table
from zeitwork.clients.admin import AdminClient


def _path(app_name: str, registry: str | None = None) -> str:
    path = f"/api/v1/projects/{quote(app_name, safe='')}/registry-credentials"
    return path if registry is None else f"{path}/{quote(registry, safe=':')}"


def register(app: typer.Typer) -> None:
    registry = typer.Typer(help="Registry credentials of an app (for its private images).")
    app.add_typer(registry, name="registry")

    @registry.command("login")
    def login(
        app_name: Annotated[str, typer.Argument(metavar="APP")],
        host: Annotated[str, typer.Argument(metavar="REGISTRY", help="host[:port]")],
        username: Annotated[str, typer.Option("--username", "-u")],
        password_stdin: Annotated[
            bool, typer.Option("--password-stdin", help="Read the password from stdin.")
        ] = False,
    ) -> None:
        """Store the credentials APP's releases use to pull images from REGISTRY."""
        if not password_stdin:
            raise fail("give the password on standard input with --password-stdin", 2)
        password = sys.stdin.read().rstrip("\r\n")
        if not password:
            raise fail("no password on standard input", 2)

        async def action(client: AdminClient) -> dict[str, Any]:
            response = await client._request(
                "PUT",
                _path(app_name, host),
                json={"username": username, "password": password},
            )
            return dict(response.json())

        saved = run_with_client(action)
        typer.echo(f"stored credentials for {saved['registry']} (user {saved['username']})")

    @registry.command("logout")
    def logout(
        app_name: Annotated[str, typer.Argument(metavar="APP")],
        host: Annotated[str, typer.Argument(metavar="REGISTRY")],
    ) -> None:
        """Remove APP's credentials for REGISTRY."""

        async def action(client: AdminClient) -> None:
            await client._request("DELETE", _path(app_name, host))

        run_with_client(action)
        typer.echo(f"removed the credentials for {host}")

    @registry.command("ls")
    def list_credentials(app_name: Annotated[str, typer.Argument(metavar="APP")]) -> None:
        """The registries APP has credentials for (user names only)."""

        async def action(client: AdminClient) -> list[dict[str, Any]]:
            response = await client._request("GET", _path(app_name))
            return list(response.json())

        rows = run_with_client(action)
        table(
            ("REGISTRY", "USERNAME", "UPDATED"),
            [(r["registry"], r["username"], str(r["updated_at"])[:19]) for r in rows],
        )
