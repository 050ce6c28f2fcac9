"""``logs`` and ``events``: an app's output and what the platform did.

With ``-f`` both follow their stream across operator restarts (resuming after the last event
seen, each line once) until Ctrl-C. Log lines go to stdout; the operator's inline notices
(``node X: unreachable, retrying``) and reconnections go to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

import typer

from zeitwork.cli.console import echo_json, echo_json_line, parsed, run_with_client
from zeitwork.cli.release_view import event_line, log_text, parse_since, parse_version, rfc3339
from zeitwork.cli.releases_cmd import EnvironmentOption, JsonOption
from zeitwork.clients.admin import AdminClient
from zeitwork.wire.admin import LogRecord
from zeitwork.wire.releases import EventOut

FollowOption = Annotated[bool, typer.Option("--follow", "-f", help="keep printing new ones")]


def _notice(text: str) -> None:
    sys.stderr.write(f"zeitwork: {text}\n")
    sys.stderr.flush()


def _reconnecting(cause: str, delay: float) -> None:
    _notice(f"stream interrupted ({cause}); reconnecting in {delay:.1f} s")


def since_param(text: str) -> str:
    """``--since`` as sent: a whole duration as given (the operator's clock counts back), any
    other accepted value as an RFC 3339 time."""
    moment = parsed(parse_since, text, datetime.now(UTC))
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in ("s", "m", "h", "d"):
        return value
    return rfc3339(moment)


def _print_event(event: EventOut, as_json: bool) -> None:
    if as_json:
        echo_json_line(event)
    else:
        typer.echo(event_line(event))


def _print_log(record: LogRecord, as_json: bool) -> None:
    if as_json:
        echo_json_line(record)
        return
    text, is_notice = log_text(record)
    if is_notice:
        _notice(text)
    else:
        typer.echo(text)


def register(app: typer.Typer) -> None:
    @app.command("events")
    def events(
        app_name: Annotated[
            str | None, typer.Argument(metavar="[APP]", help="only this app's events")
        ] = None,
        *,
        follow: FollowOption = False,
        kind: Annotated[
            str | None, typer.Option("--kind", help="only kinds starting so (instance.)")
        ] = None,
        limit: Annotated[
            int, typer.Option("--limit", min=1, max=1000, help="how many of the newest")
        ] = 100,
        as_json: JsonOption = False,
    ) -> None:
        """What the platform did and saw: releases, rollouts, instances, nodes."""
        filters = {k: v for k, v in (("project", app_name), ("kind", kind)) if v}

        async def action(client: AdminClient) -> None:
            if follow:  # the newest LIMIT first, then what comes
                async for event in client.follow_events(
                    filters=filters, backlog=limit, on_retry=_reconnecting
                ):
                    _print_event(event, as_json)
                return
            found = await client.recent_events(filters=filters, count=limit)
            if as_json:
                echo_json(found)
                return
            for event in found:
                _print_event(event, as_json)

        _until_interrupted(action)

    @app.command("logs")
    def logs(
        app_name: Annotated[str, typer.Argument(metavar="APP", help="the app")],
        *,
        follow: FollowOption = False,
        since: Annotated[
            str | None,
            typer.Option("--since", help="only lines written since: 10m, 2h, or a time"),
        ] = None,
        until: Annotated[
            str | None,
            typer.Option("--until", help="only lines written until: 5m, or a time (no -f)"),
        ] = None,
        instance: Annotated[
            str | None, typer.Option("--instance", help="only this instance (id)")
        ] = None,
        release: Annotated[
            str | None, typer.Option("--release", help="only this release (vN)")
        ] = None,
        tail: Annotated[
            int, typer.Option("--tail", min=0, max=10000, help="earlier lines per instance")
        ] = 100,
        environment: EnvironmentOption = "production",
        as_json: JsonOption = False,
    ) -> None:
        """The app's output, merged from its instances on every node by the time each line
        was written, labelled with release, instance and stream (stderr)."""
        params = {"environment": environment, "tail": str(tail)}
        if since is not None:
            params["since"] = since_param(since)
        if until is not None:
            if follow:
                raise typer.BadParameter("--until reads history; it cannot be used with -f")
            params["until"] = since_param(until)
        if instance is not None:
            params["instance"] = instance
        if release is not None:
            params["release"] = f"v{parsed(parse_version, release)}"

        async def action(client: AdminClient) -> None:
            if not follow:
                for record in await client.logs(app_name, params=params):
                    _print_log(record, as_json)
                return
            async for record in client.follow_logs(app_name, params=params, on_retry=_reconnecting):
                _print_log(record, as_json)

        _until_interrupted(action)


def _until_interrupted(action: Callable[[AdminClient], Awaitable[None]]) -> None:
    """Run a printing action; Ctrl-C, or a reader that closed the pipe (``| head``), ends
    it with status 0."""
    try:
        run_with_client(action)
    except (KeyboardInterrupt, BrokenPipeError):
        raise typer.Exit(0) from None
