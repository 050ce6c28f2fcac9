"""``deploy``, ``releases`` and ``rollback``: an app's releases.

``deploy`` creates the app if it is missing, makes a release and follows its rollout until
the release is current (exit 0) or failed (exit 1, printing the cause); ``--detach``
returns once the release exists. Without ``--image`` it builds the app from source first
(the directory, or ``--git URL [--ref REF] [--path SUBDIR]``; ``builds_cmd.deploy_source``)
and follows the release the build made. Today's ``deploy --image ID --port P --domain D`` (the
``default`` app) keeps working: ``--project`` is another name of ``--app``.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Annotated, Literal

import typer
from pydantic import ValidationError

from zeitwork.cli.builds_cmd import deploy_source, echo_plan
from zeitwork.cli.console import INTERRUPTED, echo_json, fail, parsed, run_with_client, table
from zeitwork.cli.release_view import (
    RELEASE_COLUMNS,
    parse_assignments,
    parse_version,
    release_rows,
    version_text,
)
from zeitwork.cli.rollout_follow import follow_rollout
from zeitwork.clients.admin import AdminClient
from zeitwork.core.errors import NotFound, ZeitworkError
from zeitwork.wire.admin import DomainOut
from zeitwork.wire.common import ResourcesModel
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.releases import ReleaseCreate, ReleaseOut, RolloutStrategy
from zeitwork.wire.routes import BackendProtocol

Strategy = Literal["rolling", "bluegreen", "immediate"]

EnvironmentOption = Annotated[
    str, typer.Option("--environment", "-e", help="the app's environment")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
DetachOption = Annotated[
    bool, typer.Option("--detach", help="return once the release exists; do not follow it")
]


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _quiet(text: str) -> None:
    """Progress while --json is given goes to stderr, keeping stdout one JSON document."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def health_check_of(path: str | None, tcp: bool, none: bool) -> HealthCheck | None:
    """The check chosen by ``--health-path`` / ``--health-tcp`` / ``--no-health`` (at most
    one; None keeps the current release's, else tcp on the app's port)."""
    if sum((path is not None, tcp, none)) > 1:
        raise fail("give one of --health-path, --health-tcp, --no-health", 2)
    try:
        if path is not None:
            return HealthCheck(type="http", path=path)
    except ValidationError:
        raise fail(f"--health-path {path!r}: expected a path such as /healthz", 2) from None
    if tcp:
        return HealthCheck(type="tcp")
    if none:
        return HealthCheck(type="none")
    return None


def release_or_exit(
    release: ReleaseOut, project: str, *, detach: bool, as_json: bool, started: float
) -> None:
    """Print what was released; unless detached, follow it and exit with its outcome."""
    out = _quiet if as_json else say
    name = f"{version_text(release.version)} of {project} ({release.environment})"
    out(f"{name}: {release.state.value}")
    if detach:
        if as_json:
            echo_json(release)
        return

    async def action(client: AdminClient) -> tuple[bool, str, ReleaseOut]:
        outcome, final = await follow_rollout(client, project, release, say=out, started=started)
        return outcome.ok, outcome.summary, final

    try:
        ok, summary, final = run_with_client(action)
    except KeyboardInterrupt:
        raise fail(
            f"stopped following; the rollout goes on (zeitwork status {project})", INTERRUPTED
        ) from None
    if as_json:
        echo_json(final)
    if not ok:
        raise fail(summary)
    out(f"{summary} ({time.monotonic() - started:.1f} s)")


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy(
        *,
        image: Annotated[
            str | None,
            typer.Option(
                "--image",
                help="image id (zeitwork images ls) or reference; without it the app is "
                "built from --dir (default: here) or --git",
            ),
        ] = None,
        git_url: Annotated[
            str | None, typer.Option("--git", help="build from this git repository")
        ] = None,
        ref: Annotated[
            str | None, typer.Option("--ref", help="with --git: branch or tag (default main)")
        ] = None,
        subdir: Annotated[
            str | None, typer.Option("--path", help="with --git: the subdirectory to build")
        ] = None,
        directory: Annotated[
            Path,
            typer.Option("--dir", help="build from this directory (without --image/--git)"),
        ] = Path("."),
        dockerfile: Annotated[
            str | None, typer.Option("--dockerfile", help="Dockerfile path in the source")
        ] = None,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run", help="print the detected stack and build plan; build nothing"
            ),
        ] = False,
        app_name: Annotated[
            str,
            typer.Option("--app", "--project", help="the app (created if missing)"),
        ] = "default",
        environment: EnvironmentOption = "production",
        port: Annotated[
            int | None,
            typer.Option("--port", min=1, max=65535, help="the port the app listens on"),
        ] = None,
        replicas: Annotated[
            int | None, typer.Option("--replicas", min=0, max=1000, help="default: as now")
        ] = None,
        health_path: Annotated[
            str | None, typer.Option("--health-path", help="HTTP health check: GET PATH")
        ] = None,
        health_tcp: Annotated[
            bool, typer.Option("--health-tcp", help="health check: TCP connect (the default)")
        ] = False,
        no_health: Annotated[
            bool, typer.Option("--no-health", help="no health check: healthy once running")
        ] = False,
        strategy: Annotated[
            Strategy | None,
            typer.Option(
                "--strategy",
                help="rolling (default), bluegreen, immediate; other settings as now",
            ),
        ] = None,
        env: Annotated[
            list[str] | None, typer.Option("--env", help="NAME=VALUE (repeatable)")
        ] = None,
        domain: Annotated[
            str | None, typer.Option("--domain", help="route this host to the app")
        ] = None,
        vcpu: Annotated[float | None, typer.Option("--vcpu", min=0.01)] = None,
        memory: Annotated[int | None, typer.Option("--memory", min=16, help="MiB")] = None,
        backend_protocol: Annotated[
            BackendProtocol | None,
            typer.Option(
                "--backend-protocol",
                help="http1 (HTTP/1.1, the default) or h2c (HTTP/2 cleartext: gRPC); "
                "default: as now",
            ),
        ] = None,
        response_idle_timeout: Annotated[
            float | None,
            typer.Option(
                "--response-idle-timeout",
                min=0,
                max=86400,
                help="seconds a response may stall before the load balancers cut it (504 "
                "before its head); 0: their own; default: as now",
            ),
        ] = None,
        tunnel_idle_timeout: Annotated[
            float | None,
            typer.Option(
                "--tunnel-idle-timeout",
                min=0,
                max=86400,
                help="seconds a WebSocket (any upgraded connection) may be idle before the load "
                "balancers close it (close code 1001); 0: their own; default: as now",
            ),
        ] = None,
        max_tunnels: Annotated[
            int | None,
            typer.Option(
                "--max-tunnels",
                min=0,
                max=1_000_000,
                help="WebSockets each load balancer worker holds open for the app at most (more "
                "get 503 with Retry-After); 0: no limit; default: as now",
            ),
        ] = None,
        detach: DetachOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """Deploy IMAGE as a new release of APP and follow its rollout until it serves;
        without --image, build the app from source first (this directory, or --git)."""
        started = time.monotonic()
        if image is None:
            release_options = (
                replicas,
                env,
                strategy,
                vcpu,
                memory,
                backend_protocol,
                health_path,
                response_idle_timeout,
                tunnel_idle_timeout,
                max_tunnels,
            )
            if any(o is not None for o in release_options) or health_tcp or no_health:
                raise fail(
                    "--replicas, --env, --strategy, --vcpu, --memory, --backend-protocol, the "
                    "route limits (--response-idle-timeout, --tunnel-idle-timeout, "
                    "--max-tunnels) and the health options go with --image; a build's release "
                    "keeps the current settings (change them with zeitwork env / scale)",
                    2,
                )
            _deploy_from_source(
                slug=app_name.strip().lower(),
                environment=environment,
                directory=directory,
                git_url=git_url,
                ref=ref,
                subdir=subdir,
                dockerfile=dockerfile,
                port=port,
                domain=domain,
                dry_run=dry_run,
                detach=detach,
                as_json=as_json,
                started=started,
            )
            return
        if git_url is not None or dry_run or dockerfile is not None:
            raise fail("--git, --dockerfile and --dry-run build from source: drop --image", 2)
        variables = parsed(parse_assignments, env or [])
        check = health_check_of(health_path, health_tcp, no_health)
        resources = None
        if vcpu is not None or memory is not None:
            resources = ResourcesModel(vcpu=vcpu or 0.25, memory=memory or 128)
        try:
            body = ReleaseCreate(
                image=image,
                environment=environment,
                port=port,
                replicas=replicas,
                env=variables or None,
                resources=resources,
                health_check=check,
                backend_protocol=backend_protocol,
                response_idle_timeout=response_idle_timeout,
                tunnel_idle_timeout=tunnel_idle_timeout,
                max_tunnels=max_tunnels,
            )
        except ValidationError as exc:
            raise fail(_first_error(exc), 2) from None
        slug = app_name.strip().lower()

        async def action(client: AdminClient) -> tuple[ReleaseOut, DomainOut | None]:
            owner = {p.slug: p for p in await client.projects()}.get(slug)
            if owner is None:
                owner = await client.create_project(slug)
            release = body
            if strategy is not None:
                base = await _current_strategy(client, str(owner.id), environment)
                release = body.model_copy(
                    update={"strategy": base.model_copy(update={"type": strategy})}
                )
            created = await client.create_release(str(owner.id), release)
            bound = None
            if domain:
                bound = await client.bind_domain_to_environment(
                    domain, project_id=owner.id, environment=environment
                )
            return created, bound

        created, bound = run_with_client(action)
        out = _quiet if as_json else say
        if bound is not None:
            out(f"domain {bound.name} -> {slug} ({environment})")
            if (record := bound.verification_record) is not None and not bound.verified:
                out(
                    f"  to verify it (needed for ACME certificates): publish TXT {record.name} "
                    f'"{record.value}", then: zeitwork domains verify {bound.name}'
                )
        release_or_exit(created, slug, detach=detach, as_json=as_json, started=started)

    @app.command("releases")
    def releases(
        app_name: Annotated[str, typer.Argument(metavar="APP", help="the app")],
        environment: EnvironmentOption = "production",
        as_json: JsonOption = False,
    ) -> None:
        """List the app's releases, newest first, with the cause of each failure."""
        found = run_with_client(lambda c: c.releases(app_name, environment=environment))
        if as_json:
            echo_json(found)
            return
        table(RELEASE_COLUMNS, release_rows(found))

    @app.command("rollback")
    def rollback(
        app_name: Annotated[str, typer.Argument(metavar="APP", help="the app")],
        version: Annotated[
            str | None,
            typer.Argument(metavar="[VERSION]", help="vN (default: the previous good release)"),
        ] = None,
        environment: EnvironmentOption = "production",
        detach: DetachOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """Roll back to an earlier release: a new release with its image and configuration."""
        started = time.monotonic()
        number = parsed(parse_version, version) if version is not None else None
        created = run_with_client(
            lambda c: c.rollback(app_name, version=number, environment=environment)
        )
        release_or_exit(created, app_name, detach=detach, as_json=as_json, started=started)


def _deploy_from_source(
    *,
    slug: str,
    environment: str,
    directory: Path,
    git_url: str | None,
    ref: str | None,
    subdir: str | None,
    dockerfile: str | None,
    port: int | None,
    domain: str | None,
    dry_run: bool,
    detach: bool,
    as_json: bool,
    started: float,
) -> None:
    out = _quiet if as_json else say
    if git_url is None and not directory.is_dir():
        raise fail(f"{directory} is not a directory", 2)
    if dry_run:
        if git_url is not None:
            raise fail("--dry-run reads a directory: run it in a checkout of the repository", 2)
        try:
            say(echo_plan(directory))
        except ZeitworkError as exc:
            raise fail(exc.detail) from None
        return
    if (ref is not None or subdir is not None) and git_url is None:
        raise fail("--ref and --path go with --git", 2)
    _build, release, owner = deploy_source(
        slug=slug,
        environment=environment,
        directory=directory,
        git_url=git_url,
        ref=ref,
        path=subdir,
        dockerfile=dockerfile,
        port=port,
        say=out,
        logs=_write_err if as_json else _write_through,
    )
    assert release is not None  # deploy_source exits otherwise
    if domain:
        bound = run_with_client(
            lambda c: c.bind_domain_to_environment(
                domain, project_id=uuid.UUID(owner), environment=environment
            )
        )
        out(f"domain {bound.name} -> {slug} ({environment})")
    release_or_exit(release, slug, detach=detach, as_json=as_json, started=started)


def _write_err(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _write_through(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def _current_strategy(client: AdminClient, project: str, environment: str) -> RolloutStrategy:
    """The current release's strategy (``--strategy`` changes only its type), else the
    defaults."""
    try:
        current = (await client.status(project, environment=environment)).current_release
    except NotFound:
        return RolloutStrategy()
    return current.strategy if current is not None else RolloutStrategy()


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(x) for x in error.get("loc", ()))
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))
