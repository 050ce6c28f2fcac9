"""``demo``: the busybox demo app deployed at demo.localhost on a running platform
(``zeitwork dev --demo`` does the same on the platform it starts)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from zeitwork.cli.console import fail, run_with_client
from zeitwork.clients.admin import AdminClient


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def demo(
    edge_url: Annotated[
        str, typer.Option("--edge-url", help="the edge's plain-HTTP address")
    ] = "http://127.0.0.1:8083",
) -> None:
    """Deploy the busybox demo app at demo.localhost on a running platform."""
    from zeitwork.cli.demo import DemoFailed, run_demo

    base = edge_url.rstrip("/")

    async def action(client: AdminClient) -> None:
        with tempfile.TemporaryDirectory(prefix="zeitwork-demo-") as work_dir:
            try:
                await run_demo(client, work_dir=Path(work_dir), edge_url=base, say=_say)
            except DemoFailed as exc:
                raise fail(str(exc)) from None

    run_with_client(action)
    _say(f"curl -H 'Host: demo.localhost' {base}/")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
