"""``zeitwork node-agent``: run the node agent on this host."""

from __future__ import annotations

from typing import Annotated

import typer

from zeitwork.settings import load_settings


def register(app: typer.Typer) -> None:
    @app.command("node-agent")
    def node_agent(
        drain: Annotated[
            bool,
            typer.Option(
                "--drain",
                help="On SIGTERM stop every instance first (default: leave them running).",
            ),
        ] = False,
    ) -> None:
        """Run the node agent (API on PORT, default 8081): registers with OPERATOR_URL,
        runs the instances assigned to this node."""
        from zeitwork.agent.main import run_agent
        from zeitwork.agent.settings import AgentSettings

        raise typer.Exit(run_agent(load_settings(AgentSettings), drain=drain))
