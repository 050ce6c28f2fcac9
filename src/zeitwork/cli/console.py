"""What every user verb shares: one admin client per run, errors as one line and an exit
status (never a traceback), tables printed with rich, JSON for scripts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from zeitwork.cli.config import CliSettings, TokenMissing
from zeitwork.clients.admin import AdminClient
from zeitwork.core.errors import InvalidInput, ZeitworkError
from zeitwork.settings import load_settings

_T = TypeVar("_T")

INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``zeitwork: message`` on stderr; raise the returned Exit."""
    typer.echo(f"zeitwork: {message}", err=True)
    return typer.Exit(code)


def run_with_client(action: Callable[[AdminClient], Awaitable[_T]]) -> _T:
    """Run ``action`` with an admin client; errors become one line and exit status 1
    (2 when no token can be found)."""
    settings = load_settings(CliSettings)
    try:
        token = settings.admin_token()
    except TokenMissing as exc:
        raise fail(str(exc), 2) from None

    async def main() -> _T:
        async with AdminClient(base_url=settings.operator_url, token=token) as client:
            return await action(client)

    try:
        return asyncio.run(main())
    except ZeitworkError as exc:
        raise fail(exc.detail) from None


def parsed(parse: Callable[..., _T], *args: Any) -> _T:
    """``parse(*args)``, a refusal of the command line being exit status 2."""
    try:
        return parse(*args)
    except InvalidInput as exc:
        raise fail(exc.detail, 2) from None


def table(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    console = Console()
    if not console.is_terminal:  # piped: full ids on one line, whatever the width
        console = Console(width=400)
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        grid.add_column(column, no_wrap=column in ("ID", "DIGEST", "ADDRESS", "INSTANCE"))
    for row in rows:
        grid.add_row(*row)
    console.print(grid)


def echo_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """One JSON document on stdout (a model, a list of models, or a plain mapping)."""
    if isinstance(value, BaseModel):
        typer.echo(value.model_dump_json(indent=2))
    elif isinstance(value, dict):
        typer.echo(json.dumps(value, indent=2, sort_keys=True))
    else:
        typer.echo(json.dumps([item.model_dump(mode="json") for item in value], indent=2))


def echo_json_line(value: BaseModel) -> None:
    """One compact JSON object per line (followed streams: NDJSON)."""
    typer.echo(value.model_dump_json())
