"""User verbs against a running operator: ``images``, ``instances``, ``domains``, ``demo``.
They read ``OPERATOR_URL`` (default http://127.0.0.1:8080) and ``ZEITWORK_TOKEN``, or the
operator's ``$ZEITWORK_DATA_DIR/admin-token``; tables are printed with rich. The app verbs
(``deploy``, ``status``, ``logs``...) are in ``releases_cmd``, ``apps_cmd``, ``logs_cmd`` and
``nodes_cmd``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from zeitwork.cli.console import echo_json, run_with_client, table
from zeitwork.cli.console import fail as _fail
from zeitwork.cli.releases_cmd import JsonOption
from zeitwork.clients.admin import AdminClient, DomainInfo, PathLimitInfo


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / (1024 * 1024):.1f} MiB"


async def _find_domain(client: AdminClient, name: str) -> DomainInfo:
    match = {d.name: d for d in await client.domains()}.get(name.strip().lower())
    if match is None:
        raise _fail(f"no domain {name}")
    return match


def _limits_text(domain: DomainInfo) -> str:
    """``20/s (burst 40), /login 1/s``; ``-`` when the edges' global limit applies."""

    def one(rps: float, burst: int | None) -> str:
        return f"{rps:g}/s" + (f" (burst {burst})" if burst is not None else "")

    parts = [one(domain.rate_limit_rps, domain.rate_limit_burst)] if domain.rate_limit_rps else []
    parts += [f"{x.path_prefix} {one(x.rps, x.burst)}" for x in domain.path_rate_limits]
    return ", ".join(parts) or "-"


def _target_text(domain: DomainInfo) -> str:
    """``environment 1a2b3c4d`` (its current release), ``deployment 5e6f7a8b``, or ``-``."""
    if domain.project_environment_id is not None:
        return f"environment {str(domain.project_environment_id)[:8]}"
    if domain.deployment_id is not None:
        return f"deployment {str(domain.deployment_id)[:8]}"
    return "-"


def register(app: typer.Typer) -> None:
    images = typer.Typer(help="OCI images in the operator's store.", no_args_is_help=True)

    @images.command("import")
    def images_import(
        archive: Annotated[
            Path,
            typer.Argument(exists=True, dir_okay=False, readable=True, help="an OCI archive (tar)"),
        ],
        name: Annotated[str, typer.Option("--name", help="the image's name")],
    ) -> None:
        """Import an OCI image archive (as `buildah push IMAGE oci-archive:FILE` writes it)."""
        image = run_with_client(lambda c: c.import_image(archive, name=name))
        table(
            ("ID", "NAME", "STATUS", "DIGEST", "SIZE"),
            [(str(image.id), image.name, image.status, image.digest or "-", _size(image.size))],
        )

    @images.command("ls")
    def images_ls(as_json: JsonOption = False) -> None:
        """List images."""
        found = run_with_client(lambda c: c.images())
        if as_json:
            echo_json(found)
            return
        table(
            ("ID", "NAME", "STATUS", "DIGEST", "SIZE", "CREATED"),
            [
                (
                    str(i.id),
                    i.name,
                    i.status,
                    (i.digest or "-")[:19],
                    _size(i.size),
                    _when(i.created_at),
                )
                for i in found
            ],
        )

    app.add_typer(images, name="images")

    instances = typer.Typer(help="Instances (running copies of images).", no_args_is_help=True)

    @instances.command("ls")
    def instances_ls(
        deployment: Annotated[
            uuid.UUID | None, typer.Option("--deployment", help="only of this deployment")
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """List instances (not those marked for termination)."""
        found = run_with_client(lambda c: c.instances(deployment_id=deployment))
        if as_json:
            echo_json(found)
            return
        table(
            ("ID", "STATE", "DESIRED", "ADDRESS", "NODE", "DEPLOYMENT", "REASON"),
            [
                (
                    str(i.id),
                    i.state,
                    i.desired_state,
                    f"{i.ip_address}:{i.port}" if i.ip_address else "-",
                    str(i.node_id)[:8] if i.node_id else "-",
                    str(i.deployment_id)[:8] if i.deployment_id else "-",
                    (i.reason or "")[:60],
                )
                for i in found
            ],
        )

    @instances.command("rm")
    def instances_rm(
        instance: Annotated[uuid.UUID, typer.Argument(help="instance id")],
    ) -> None:
        """Stop and terminate an instance (its node stops it; routes drop it)."""
        done = run_with_client(lambda c: c.terminate_instance(instance))
        typer.echo(f"instance {done.id}: desired {done.desired_state} (now {done.state})")

    app.add_typer(instances, name="instances")

    domains = typer.Typer(help="Domains (hosts routed to apps).", no_args_is_help=True)

    @domains.command("ls")
    def domains_ls(as_json: JsonOption = False) -> None:
        """List domains; an unverified one shows the TXT record that verifies it."""

        found = run_with_client(lambda c: c.domains())
        if as_json:
            echo_json(found)
            return
        table(
            ("NAME", "VERIFIED", "ROUTED TO", "RATE LIMITS", "TO VERIFY: TXT RECORD"),
            [
                (
                    d.name,
                    "yes" if d.verified else "no",
                    _target_text(d),
                    _limits_text(d),
                    f"{r.name} {r.value}" if (r := d.verification_record) else "-",
                )
                for d in found
            ],
        )

    @domains.command("verify")
    def domains_verify(name: Annotated[str, typer.Argument(help="the domain name")]) -> None:
        """Check the domain's TXT record now (ACME certificates need a verified domain)."""

        async def action(client: AdminClient) -> DomainInfo:
            match = await _find_domain(client, name)
            return await client.verify_domain(match.id)

        done = run_with_client(action)
        typer.echo(f"domain {done.name}: verified")

    @domains.command("ca")
    def domains_ca() -> None:
        """Print the internal CA certificate (PEM) that edges in internal TLS mode issue with:
        trust it to reach the domains over HTTPS (``curl --cacert``)."""
        typer.echo(run_with_client(lambda client: client.internal_ca_certificate()), nl=False)

    @domains.command("limit")
    def domains_limit(
        name: Annotated[str, typer.Argument(help="the domain name")],
        rps: Annotated[
            float | None, typer.Option(help="requests per second per client", min=0.001)
        ] = None,
        burst: Annotated[int | None, typer.Option(help="burst (default 2 x rps)", min=1)] = None,
        path: Annotated[
            str | None, typer.Option(help="only requests under this path prefix, e.g. /login")
        ] = None,
        clear: Annotated[bool, typer.Option("--clear", help="remove the limit")] = False,
    ) -> None:
        """Set the edge's per-client rate limit of a domain, or of one of its path prefixes."""
        if clear == (rps is not None):
            raise _fail("give --rps, or --clear", code=2)
        if burst is not None and rps is None:
            raise _fail("--burst needs --rps", code=2)

        async def action(client: AdminClient) -> DomainInfo:
            match = await _find_domain(client, name)
            if path is None:
                return await client.set_domain_rate_limit(match.id, rps, burst)
            kept = [x for x in match.path_rate_limits if x.path_prefix != path]
            if rps is not None:
                kept.append(PathLimitInfo(path_prefix=path, rps=rps, burst=burst))
            return await client.set_domain_path_rate_limits(match.id, kept)

        done = run_with_client(action)
        typer.echo(f"domain {done.name}: {_limits_text(done)}")

    @domains.command("policy")
    def domains_policy(
        name: Annotated[str, typer.Argument(help="the domain name")],
        *,
        cors_origin: Annotated[
            list[str] | None,
            typer.Option(help="an origin allowed by CORS (repeat; https://*.example.com too)"),
        ] = None,
        cors_credentials: Annotated[
            bool, typer.Option("--cors-credentials", help="allow credentials (cookies)")
        ] = False,
        csp: Annotated[str | None, typer.Option(help="Content-Security-Policy value")] = None,
        frame_options: Annotated[str | None, typer.Option(help="DENY, SAMEORIGIN, or off")] = None,
        hsts_max_age: Annotated[
            int | None, typer.Option(help="seconds; 0 switches HSTS off", min=0)
        ] = None,
        clear: Annotated[
            bool, typer.Option("--clear", help="back to the edges' global policy")
        ] = False,
    ) -> None:
        """Set the domain's CORS and security headers at every edge (replaces what was set;
        an option left out keeps the edges' global value)."""
        policy: dict[str, Any] = {}
        if cors_origin:
            policy["cors"] = {"origins": cors_origin, "credentials": cors_credentials}
        elif cors_credentials:
            raise _fail("--cors-credentials needs --cors-origin", code=2)
        headers: dict[str, Any] = {}
        if csp is not None:
            headers["content_security_policy"] = csp
        if frame_options is not None:
            headers["frame_options"] = "" if frame_options.lower() == "off" else frame_options
        if hsts_max_age is not None:
            headers["hsts_max_age"] = hsts_max_age
        if headers:
            policy["headers"] = headers
        if clear == bool(policy):
            raise _fail("give --clear, or at least one policy option", code=2)

        async def action(client: AdminClient) -> DomainInfo:
            match = await _find_domain(client, name)
            return await client.set_domain_edge_policy(match.id, policy)

        done = run_with_client(action)
        typer.echo(f"domain {done.name}: edge policy {json.dumps(done.edge_policy or {})}")

    app.add_typer(domains, name="domains")

    @app.command("demo")
    def demo(
        edge_url: Annotated[
            str, typer.Option("--edge-url", help="the edge's plain-HTTP address")
        ] = "http://127.0.0.1:8083",
    ) -> None:
        """Deploy the busybox demo app at demo.localhost on a running platform."""
        from zeitwork.cli.demo import DemoFailed, run_demo

        def say(text: str) -> None:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()

        async def action(client: AdminClient) -> None:
            with tempfile.TemporaryDirectory(prefix="zeitwork-demo-") as work_dir:
                try:
                    await run_demo(
                        client, work_dir=Path(work_dir), edge_url=edge_url.rstrip("/"), say=say
                    )
                except DemoFailed as exc:
                    raise _fail(str(exc)) from None

        run_with_client(action)
        say(f"curl -H 'Host: demo.localhost' {edge_url.rstrip('/')}/")
