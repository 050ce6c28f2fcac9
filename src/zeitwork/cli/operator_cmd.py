"""``zeitwork operator``, ``zeitwork migrate`` and ``zeitwork token``.

``migrate`` and ``token create`` work on the database directly (DATABASE_URL, or the
embedded server under ``$ZEITWORK_DATA_DIR/postgres`` when it is unset).
"""

from __future__ import annotations

import asyncio
import sys
from enum import StrEnum
from typing import Annotated

import typer

from zeitwork.settings import ServiceSettings, load_settings


class _CreatableScope(StrEnum):
    ADMIN = "admin"
    JOIN = "join"
    PROXY = "proxy"
    BUILDER = "builder"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"zeitwork: {message}", err=True)
    return typer.Exit(1)


def _log_to_stderr(settings: ServiceSettings) -> None:
    """Logs go to stderr, so that stdout carries only the command's answer."""
    from zeitwork.observability import configure_logging

    configure_logging(
        service="zeitwork", environment=settings.environment.value, level=settings.log_level.value
    )


def register(app: typer.Typer) -> None:
    @app.command("operator")
    def operator() -> None:
        """Run the operator (control plane API on PORT, default 8080)."""
        from zeitwork.operator.main import run_operator
        from zeitwork.operator.settings import OperatorSettings

        raise typer.Exit(run_operator(load_settings(OperatorSettings)))

    migrate_app = typer.Typer(
        help="Migrate the operator's database (upgrade to head without a subcommand).",
        invoke_without_command=True,
        no_args_is_help=False,
    )

    def _run_migrations(action: str, target: str) -> None:
        from zeitwork.core.errors import ZeitworkError
        from zeitwork.operator.main import run_migrations
        from zeitwork.operator.settings import OperatorSettings

        settings = load_settings(OperatorSettings)
        _log_to_stderr(settings)
        try:
            revision = asyncio.run(run_migrations(settings, action, target))
        except ZeitworkError as exc:
            raise _fail(exc.detail) from None
        typer.echo(f"database at revision {revision or 'base (empty)'}")

    @migrate_app.callback()
    def migrate(ctx: typer.Context) -> None:
        if ctx.invoked_subcommand is None:
            _run_migrations("upgrade", "head")

    @migrate_app.command("downgrade")
    def downgrade(target: Annotated[str, typer.Argument(help="a revision, or 'base'")]) -> None:
        """Downgrade to TARGET (destroys data of the undone migrations)."""
        _run_migrations("downgrade", target)

    @migrate_app.command("current")
    def current() -> None:
        """Print the database's revision."""
        _run_migrations("current", "")

    @migrate_app.command("revision")
    def revision(
        message: Annotated[str, typer.Argument(help="what the migration changes")],
    ) -> None:
        """Write a new empty migration on top of head (SQL goes into op.execute)."""
        from zeitwork.operator.db.migrate import new_revision

        typer.echo(str(new_revision(message)))

    app.add_typer(migrate_app, name="migrate")

    token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)

    @token_app.command("create")
    def create(
        scope: Annotated[
            _CreatableScope, typer.Option("--scope", help="admin, join, proxy or builder")
        ],
        name: Annotated[str, typer.Option("--name", help="a label for the token")] = "",
    ) -> None:
        """Create a token in the database and print it (it is shown only once)."""
        from zeitwork.core.errors import ZeitworkError
        from zeitwork.operator.main import create_token
        from zeitwork.operator.principal import Scope
        from zeitwork.operator.settings import OperatorSettings

        settings = load_settings(OperatorSettings)
        _log_to_stderr(settings)
        try:
            secret = asyncio.run(create_token(settings, Scope(scope.value), name))
        except ZeitworkError as exc:
            raise _fail(exc.detail) from None
        sys.stdout.write(secret + "\n")

    app.add_typer(token_app, name="token")
