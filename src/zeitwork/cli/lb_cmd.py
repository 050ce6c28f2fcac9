"""``zeitwork load-balancer``: run the HTTP load balancer (configuration from the environment)."""

from __future__ import annotations

import typer

from zeitwork.lb.main import run
from zeitwork.lb.settings import LBSettings
from zeitwork.settings import load_settings


def register(app: typer.Typer) -> None:
    @app.command("load-balancer")
    def load_balancer() -> None:
        """Run the load balancer (PORT 8082; admin on LB_ADMIN_HOST:LB_ADMIN_PORT)."""
        settings = load_settings(LBSettings)
        raise typer.Exit(run(settings))
