"""``zeitwork builder``: run a builder (configuration from the environment)."""

from __future__ import annotations

import typer

from zeitwork.builder.main import run
from zeitwork.builder.settings import BuilderSettings
from zeitwork.settings import load_settings


def register(app: typer.Typer) -> None:
    @app.command("builder")
    def builder() -> None:
        """Run a builder: lease build jobs from OPERATOR_URL with ZEITWORK_BUILDER_TOKEN and
        build them with buildah (health and metrics on HOST:PORT, 127.0.0.1:9085)."""
        settings = load_settings(BuilderSettings)
        raise typer.Exit(run(settings))
