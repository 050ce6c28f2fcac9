"""``builds``: an app's builds from source, and the build half of ``deploy``.

- ``zeitwork builds [APP]``: the builds, newest first (all apps without APP).
- ``zeitwork builds logs ID [-f]``: the kept output; ``-f`` follows it until the build ends.
- ``zeitwork builds cancel ID``.

``deploy_source`` is what ``zeitwork deploy`` does without ``--image``: pack the directory
(the files git tracks, else all but the ``.dockerignore``/``.gitignore`` patterns), upload
the context unless the operator has its sha256 already, or name a git repository; start the
build, stream its output, and hand back the release it made (``deploy`` then follows it
as it follows an ``--image`` release).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from zeitwork.cli.config import CliSettings, TokenMissing
from zeitwork.cli.console import INTERRUPTED, echo_json, fail, table
from zeitwork.clients.admin import AdminClient
from zeitwork.clients.builds import BuildsClient
from zeitwork.core.errors import ZeitworkError
from zeitwork.settings import load_settings
from zeitwork.wire.builds import BuildCreate, BuildLogChunk, BuildOut, BuildState, GitSource
from zeitwork.wire.releases import ReleaseOut

_T = TypeVar("_T")

CONTEXT_LIMIT = 200 * 1024 * 1024
"""The client's own bound on a packed context (the operator's default limit too)."""
COLUMNS = ("ID", "APP", "ENV", "STATE", "SOURCE", "COMMIT", "TOOK", "QUEUED", "CAUSE")


def run_with_clients(action: Callable[[AdminClient, BuildsClient], Awaitable[_T]]) -> _T:
    """Run ``action`` with the admin and builds clients; errors become one line and exit
    status 1 (2 without a token)."""
    settings = load_settings(CliSettings)
    try:
        token = settings.admin_token()
    except TokenMissing as exc:
        raise fail(str(exc), 2) from None

    async def main() -> _T:
        async with (
            AdminClient(base_url=settings.operator_url, token=token) as admin,
            BuildsClient(base_url=settings.operator_url, token=token) as builds,
        ):
            return await action(admin, builds)

    try:
        return asyncio.run(main())
    except ZeitworkError as exc:
        raise fail(exc.detail) from None


def _short(value: uuid.UUID | str | None, size: int = 8) -> str:
    return "-" if value is None else str(value)[:size]


def _source(build: BuildOut) -> str:
    if build.source_kind == "dir":
        return f"dir {_short(build.context_sha256, 12)}"
    where = build.git_url or ""
    if build.git_ref:
        where += f"@{build.git_ref}"
    if build.git_path:
        where += f":{build.git_path}"
    return where


def _took(build: BuildOut) -> str:
    if build.started_at is None:
        return "-"
    end = build.finished_at or datetime.now(UTC)
    return f"{(end - build.started_at).total_seconds():.1f}s"


def rows(builds: list[BuildOut]) -> list[list[str]]:
    out = []
    for b in builds:
        cause = ""
        if b.state is BuildState.FAILED:
            cause = f"{b.failed_step or ''}: {(b.error or '').splitlines()[0] if b.error else ''}"
        elif b.reused_build_id is not None:
            cause = f"unchanged (reused {_short(b.reused_build_id)})"
        out.append(
            [
                str(b.id),
                b.project,
                b.environment,
                b.state.value + (" (cancel asked)" if b.cancel_requested else ""),
                _source(b),
                _short(b.git_commit, 12),
                _took(b),
                b.queued_at.strftime("%Y-%m-%d %H:%M:%S"),
                cause[:100],
            ]
        )
    return out


async def stream_logs(
    builds: BuildsClient, build_id: uuid.UUID, write: Callable[[str], None]
) -> BuildOut:
    """Write the build's output as it comes; the finished build."""
    final: BuildOut | None = None

    def retrying(cause: str, delay: float) -> None:
        sys.stderr.write(f"({cause}; again in {delay:.1f} s)\n")

    async for item in builds.follow_logs(build_id, on_retry=retrying):
        if isinstance(item, BuildLogChunk):
            write(item.data)
        else:
            final = item
    if final is None:  # pragma: no cover - follow_logs ends only with the build
        final = await builds.build(build_id)
    return final


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def failure_text(build: BuildOut) -> str:
    step = f" at {build.failed_step}" if build.failed_step else ""
    return f"build {build.id} {build.state.value}{step}: {build.error or 'no cause recorded'}"


async def _release_of(admin: AdminClient, build: BuildOut) -> ReleaseOut:
    for release in await admin.releases(build.project, environment=build.environment):
        if release.id == build.release_id:
            return release
    raise ZeitworkError(f"the release {build.release_id} of build {build.id} is not listed")


def deploy_source(
    *,
    slug: str,
    environment: str,
    directory: Path,
    git_url: str | None,
    ref: str | None,
    path: str | None,
    dockerfile: str | None,
    port: int | None,
    say: Callable[[str], None],
    logs: Callable[[str], None] = _write,
    limit: int = CONTEXT_LIMIT,
) -> tuple[BuildOut, ReleaseOut | None, str]:
    """Build the app from ``directory`` or ``git_url``; (the build, its release or None,
    the app's id). Exits 1 with the cause when the build does not succeed."""
    try:
        if git_url is not None:
            body = BuildCreate(
                environment=environment,
                git=GitSource(url=git_url, ref=ref, path=path),
                dockerfile=dockerfile,
                port=port,
            )
        else:
            body = BuildCreate(
                environment=environment, context="0" * 64, dockerfile=dockerfile, port=port
            )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "git")
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        raise fail(f"{where or 'build'}: {message}", 2) from None

    async def action(
        admin: AdminClient, builds: BuildsClient
    ) -> tuple[BuildOut, ReleaseOut | None, str]:
        owner = {p.slug: p for p in await admin.projects()}.get(slug)
        if owner is None:
            owner = await admin.create_project(slug)
        request = body
        if git_url is None:
            request = body.model_copy(
                update={"context": await _upload(builds, directory, limit, say)}
            )
        build = await builds.create(str(owner.id), request)
        say(f"build {build.id} {build.state.value} ({_source(build)})")
        final = build
        if build.state not in (BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED):
            final = await stream_logs(builds, build.id, logs)
        if final.state is not BuildState.SUCCEEDED:
            return final, None, str(owner.id)
        took = _took(final)
        reused = " (unchanged: image reused)" if final.reused_build_id else ""
        say(f"build {final.id} succeeded in {took}{reused}; image {final.image_id}")
        if final.release_id is None:
            return final, None, str(owner.id)
        return final, await _release_of(admin, final), str(owner.id)

    try:
        build, release, owner = run_with_clients(action)
    except KeyboardInterrupt:
        raise fail("stopped following; the build goes on (zeitwork builds)", INTERRUPTED) from None
    if build.state is not BuildState.SUCCEEDED:
        raise fail(failure_text(build))
    if release is None:
        raise fail(f"build {build.id} succeeded but made no release: {build.error or '?'}")
    return build, release, owner


async def _upload(
    builds: BuildsClient, directory: Path, limit: int, say: Callable[[str], None]
) -> str:
    from zeitwork.builds.context import pack

    fd, name = tempfile.mkstemp(prefix="zeitwork-context-", suffix=".tar.gz")
    archive = Path(name)
    try:
        started = time.monotonic()
        with os.fdopen(fd, "wb") as out:
            info = await asyncio.to_thread(pack, directory, out, limit=limit)
        say(
            f"packed {directory} ({info.files} files, {info.size / 1e6:.2f} MB, "
            f"sha256 {info.sha256[:12]}) in {time.monotonic() - started:.2f} s"
        )
        if await builds.has_context(info.sha256):
            say("context unchanged: the operator has it already")
        else:
            await builds.upload_context(info.sha256, archive)
            say("context uploaded")
        return info.sha256
    finally:
        await asyncio.to_thread(archive.unlink, missing_ok=True)


class _DefaultList(TyperGroup):
    """``zeitwork builds [APP]`` lists; ``logs`` and ``cancel`` are subcommands."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if (
            not args
            or (args[0] not in self.commands and not args[0].startswith("-"))
            or args[0] in ("--json",)
        ):
            args = ["list", *args]
        return super().parse_args(ctx, args)


def register(app: typer.Typer) -> None:
    builds_app = typer.Typer(
        cls=_DefaultList, help="Builds from source: list, follow, cancel.", no_args_is_help=False
    )
    app.add_typer(builds_app, name="builds")

    @builds_app.command("list")
    def list_builds(
        app_name: Annotated[
            str | None, typer.Argument(metavar="[APP]", help="the app (default: all)")
        ] = None,
        limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 20,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    ) -> None:
        """The builds, newest first."""
        found = run_with_clients(lambda _a, b: b.builds(project=app_name, limit=limit))
        if as_json:
            echo_json(found)
            return
        table(COLUMNS, rows(found))

    @builds_app.command("logs")
    def logs(
        build_id: Annotated[uuid.UUID, typer.Argument(metavar="ID")],
        follow: Annotated[bool, typer.Option("--follow", "-f", help="until it ends")] = False,
    ) -> None:
        """The build's output (the newest ~1 MiB is kept); -f follows it while it runs."""

        async def action(_admin: AdminClient, builds: BuildsClient) -> BuildOut:
            if follow:
                return await stream_logs(builds, build_id, _write)
            after = 0
            while chunks := await builds.logs(build_id, after=after):
                for chunk in chunks:
                    _write(chunk.data)
                after = chunks[-1].seq
            return await builds.build(build_id)

        try:
            final = run_with_clients(action)
        except KeyboardInterrupt:
            raise fail("stopped following", INTERRUPTED) from None
        if final.state is BuildState.FAILED:
            raise fail(failure_text(final))
        if final.state is BuildState.CANCELLED:
            raise fail(f"build {final.id} was cancelled")

    @builds_app.command("cancel")
    def cancel(build_id: Annotated[uuid.UUID, typer.Argument(metavar="ID")]) -> None:
        """Cancel a queued build, or stop a running one."""
        build = run_with_clients(lambda _a, b: b.cancel(build_id))
        if build.state is BuildState.CANCELLED:
            typer.echo(f"build {build.id} cancelled")
        elif build.cancel_requested and build.state is BuildState.RUNNING:
            typer.echo(f"build {build.id}: cancel asked; its builder stops it")
        else:
            typer.echo(f"build {build.id} is {build.state.value}: nothing to cancel")


def echo_plan(directory: Path) -> str:
    """``deploy --dry-run``: what was detected in ``directory`` and the plan."""
    from zeitwork.builds.detect import detect, render_plan

    return str(render_plan(detect(directory), environ=dict(os.environ)))
