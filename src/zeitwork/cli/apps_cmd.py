"""``apps``, ``status``, ``scale`` and ``env``: what runs and how it is configured.

A configuration change (``env set`` / ``env unset``) is a new release, followed like a
deploy; ``scale`` changes the current release's replica count without one. Secret values are
sent once and never printed back.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from zeitwork.cli.config import CliSettings
from zeitwork.cli.console import echo_json, parsed, run_with_client, table
from zeitwork.cli.release_view import (
    APP_COLUMNS,
    ENV_COLUMNS,
    INSTANCE_COLUMNS,
    app_row,
    env_rows,
    instance_rows,
    parse_assignments,
    status_header,
    version_text,
)
from zeitwork.cli.releases_cmd import (
    DetachOption,
    EnvironmentOption,
    JsonOption,
    release_or_exit,
)
from zeitwork.clients.admin import AdminClient
from zeitwork.core.errors import NotFound
from zeitwork.settings import load_settings
from zeitwork.wire.admin import ProjectOut
from zeitwork.wire.releases import AppStatus, EnvChange

AppArgument = Annotated[str, typer.Argument(metavar="APP", help="the app (name or id)")]


async def _status_or_none(
    client: AdminClient, project: ProjectOut, environment: str
) -> AppStatus | None:
    try:
        return await client.status(str(project.id), environment=environment)
    except NotFound:
        return None


def register(app: typer.Typer) -> None:
    apps_group = typer.Typer(
        help="List the apps with their current release and serving instances.",
        invoke_without_command=True,
    )
    app.add_typer(apps_group, name="apps")

    @apps_group.callback()
    def apps(
        ctx: typer.Context,
        environment: EnvironmentOption = "production",
        as_json: JsonOption = False,
    ) -> None:
        """List the apps with their current release and serving instances."""
        if ctx.invoked_subcommand is not None:
            return

        async def action(client: AdminClient) -> list[tuple[ProjectOut, AppStatus | None]]:
            projects = await client.projects()
            found = await asyncio.gather(
                *(_status_or_none(client, p, environment) for p in projects)
            )
            return list(zip(projects, found, strict=True))

        listed = run_with_client(action)
        if as_json:
            echo_json([s for _, s in listed if s is not None])
            return
        table(APP_COLUMNS, [app_row(p.slug, s) for p, s in listed])

    @app.command("status")
    def status(
        app_name: AppArgument,
        environment: EnvironmentOption = "production",
        as_json: JsonOption = False,
    ) -> None:
        """The app's current release, instances per node with their health, domains, and
        request figures when the load balancers report them."""
        found = run_with_client(lambda c: c.status(app_name, environment=environment))
        if as_json:
            echo_json(found)
            return
        for line in status_header(found):
            typer.echo(line)
        if found.instances:
            typer.echo("")
            table(INSTANCE_COLUMNS, instance_rows(found.instances, datetime.now(UTC)))

    @app.command("scale")
    def scale(
        app_name: AppArgument,
        replicas: Annotated[int, typer.Argument(metavar="N", min=0, max=1000)],
        environment: EnvironmentOption = "production",
        as_json: JsonOption = False,
    ) -> None:
        """Run N instances of the current release (no new release; fewer drain first)."""
        found = run_with_client(lambda c: c.scale(app_name, replicas, environment=environment))
        if as_json:
            echo_json(found)
            return
        current = found.current_release
        typer.echo(
            f"{found.slug} ({found.environment}): {found.replicas} replica(s) of "
            f"{version_text(current.version) if current else 'no release'}"
        )

    @apps_group.command("webhook")
    def webhook(
        app_name: AppArgument,
        *,
        rotate: Annotated[
            bool, typer.Option("--rotate", help="replace the secret (update GitHub too)")
        ] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Show the GitHub webhook's payload URL and secret.

        Paste them into the repository's Settings, Webhooks: a push to the app's branch
        then builds and releases that commit."""
        shown = run_with_client(lambda c: c.project_webhook(app_name, rotate=rotate))
        url = load_settings(CliSettings).operator_url.rstrip("/") + shown.path
        if as_json:
            typer.echo(json.dumps({**shown.model_dump(mode="json"), "url": url}, indent=2))
            return
        typer.echo(f"Payload URL:   {url}")
        typer.echo("Content type:  application/json")
        typer.echo(f"Secret:        {shown.secret}")
        typer.echo("Events:        Just the push event")
        typer.echo(f"Pushes to {shown.branch!r} are built and released; other branches ignored.")
        if rotate:
            typer.echo("The secret is new: deliveries signed with the old one are refused.")

    env = typer.Typer(help="An app's environment variables and secrets.", no_args_is_help=True)

    @env.command("ls")
    def env_ls(
        app_name: AppArgument,
        environment: EnvironmentOption = "production",
        as_json: JsonOption = False,
    ) -> None:
        """List the variables; secrets are listed by name, their values never shown."""
        found = run_with_client(lambda c: c.env(app_name, environment=environment))
        if as_json:
            echo_json(found)
            return
        table(ENV_COLUMNS, env_rows(found))

    @env.command("set")
    def env_set(
        app_name: AppArgument,
        pairs: Annotated[list[str], typer.Argument(metavar="NAME=VALUE...")],
        *,
        secret: Annotated[
            bool, typer.Option("--secret", help="store encrypted; never shown back")
        ] = False,
        environment: EnvironmentOption = "production",
        detach: DetachOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """Set variables: a new release, rolled out like a deploy."""
        started = time.monotonic()
        values = parsed(parse_assignments, pairs)
        change = (
            EnvChange(environment=environment, secrets=values)
            if secret
            else EnvChange(environment=environment, set=values)
        )
        created = run_with_client(lambda c: c.change_env(app_name, change))
        release_or_exit(created, app_name, detach=detach, as_json=as_json, started=started)

    @env.command("unset")
    def env_unset(
        app_name: AppArgument,
        names: Annotated[list[str], typer.Argument(metavar="NAME...")],
        *,
        environment: EnvironmentOption = "production",
        detach: DetachOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """Remove variables or secrets: a new release, rolled out like a deploy."""
        started = time.monotonic()
        change = EnvChange(environment=environment, unset=names)
        created = run_with_client(lambda c: c.change_env(app_name, change))
        release_or_exit(created, app_name, detach=detach, as_json=as_json, started=started)

    app.add_typer(env, name="env")
