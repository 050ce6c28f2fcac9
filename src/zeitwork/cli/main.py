"""``zeitwork``: run a service, migrate the database, manage tokens.

Each service's commands live in their own module with a ``register(app)`` function; only
commands that work are registered, so ``zeitwork --help`` lists exactly what is there.
"""

from __future__ import annotations

import importlib

import typer

from zeitwork import __version__

app = typer.Typer(
    name="zeitwork",
    help="Zeitwork: run containerized apps on your own fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules under zeitwork.cli that contribute commands, in --help order.
_COMMAND_MODULES = (
    "zeitwork.cli.operator_cmd",
    "zeitwork.cli.agent_cmd",
    "zeitwork.cli.lb_cmd",
    "zeitwork.cli.edge_cmd",
    "zeitwork.cli.builder_cmd",
    "zeitwork.cli.dev_cmd",
    "zeitwork.cli.releases_cmd",
    "zeitwork.cli.registry_cmd",
    "zeitwork.cli.builds_cmd",
    "zeitwork.cli.apps_cmd",
    "zeitwork.cli.logs_cmd",
    "zeitwork.cli.nodes_cmd",
    "zeitwork.cli.images_cmd",
    "zeitwork.cli.instances_cmd",
    "zeitwork.cli.domains_cmd",
    "zeitwork.cli.demo_cmd",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"zeitwork {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Zeitwork: run containerized apps on your own fleet."""


def _register_all() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that service's commands are not built yet
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    app()
