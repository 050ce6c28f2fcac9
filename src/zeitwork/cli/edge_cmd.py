"""``zeitwork edge-proxy``: the public entry (TLS, redirects, rate limits, CORS, headers)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("edge-proxy")
    def edge_proxy() -> None:
        """Run the edge proxy (HTTPS on EDGE_HTTPS_PORT, HTTP on PORT) in front of the load
        balancer. Configuration comes from the environment (see docs/edge-proxy.md)."""
        from zeitwork.edge.main import serve_workers
        from zeitwork.edge.settings import EdgeSettings
        from zeitwork.observability import configure_logging
        from zeitwork.settings import load_settings

        settings = load_settings(EdgeSettings)
        configure_logging(
            service="edge-proxy",
            environment=settings.environment.value,
            level=settings.log_level.value,
        )
        try:
            code = serve_workers(settings)
        except ValueError as exc:  # a policy that cannot be built (bad CORS origin, ...)
            typer.echo(f"zeitwork: configuration error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # a port in use, an unreadable certificate file, ...
            typer.echo(f"zeitwork: edge-proxy cannot start: {exc}", err=True)
            raise typer.Exit(1) from None
        if code:
            raise typer.Exit(code)
