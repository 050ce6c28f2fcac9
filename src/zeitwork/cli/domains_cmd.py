"""``domains ls``, ``verify``, ``ca``, ``limit`` and ``policy``: the hosts routed to apps.

NAME is a domain's name; each verb looks it up in the operator's list first. A rate limit or
an edge policy set here replaces the domain's previous one at every edge.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from zeitwork.cli.console import echo_json, fail, run_with_client, table
from zeitwork.cli.releases_cmd import JsonOption
from zeitwork.clients.admin import AdminClient
from zeitwork.wire.admin import DomainOut
from zeitwork.wire.routes import PathRateLimit

NameArgument = Annotated[str, typer.Argument(help="the domain name")]


async def _find_domain(client: AdminClient, name: str) -> DomainOut:
    match = {d.name: d for d in await client.domains()}.get(name.strip().lower())
    if match is None:
        raise fail(f"no domain {name}")
    return match


def limits_text(domain: DomainOut) -> str:
    """``20/s (burst 40), /login 1/s``; ``-`` when the edges' global limit applies."""

    def one(rps: float, burst: int | None) -> str:
        return f"{rps:g}/s" + (f" (burst {burst})" if burst is not None else "")

    parts = [one(domain.rate_limit_rps, domain.rate_limit_burst)] if domain.rate_limit_rps else []
    parts += [f"{x.path_prefix} {one(x.rps, x.burst)}" for x in domain.path_rate_limits]
    return ", ".join(parts) or "-"


def target_text(domain: DomainOut) -> str:
    """``environment 1a2b3c4d`` (its current release), ``deployment 5e6f7a8b``, or ``-``."""
    if domain.project_environment_id is not None:
        return f"environment {str(domain.project_environment_id)[:8]}"
    if domain.deployment_id is not None:
        return f"deployment {str(domain.deployment_id)[:8]}"
    return "-"


def edge_policy(
    *,
    cors_origin: list[str] | None,
    cors_credentials: bool,
    csp: str | None,
    frame_options: str | None,
    hsts_max_age: int | None,
) -> dict[str, Any]:
    """The edge policy the options of ``domains policy`` give (``{}`` for none of them);
    ``--cors-credentials`` without an origin is a usage error (exit status 2)."""
    policy: dict[str, Any] = {}
    if cors_origin:
        policy["cors"] = {"origins": cors_origin, "credentials": cors_credentials}
    elif cors_credentials:
        raise fail("--cors-credentials needs --cors-origin", code=2)
    headers: dict[str, Any] = {}
    if csp is not None:
        headers["content_security_policy"] = csp
    if frame_options is not None:
        headers["frame_options"] = "" if frame_options.lower() == "off" else frame_options
    if hsts_max_age is not None:
        headers["hsts_max_age"] = hsts_max_age
    if headers:
        policy["headers"] = headers
    return policy


def list_domains(as_json: JsonOption = False) -> None:
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
                target_text(d),
                limits_text(d),
                f"{r.name} {r.value}" if (r := d.verification_record) else "-",
            )
            for d in found
        ],
    )


def verify_domain(name: NameArgument) -> None:
    """Check the domain's TXT record now (ACME certificates need a verified domain)."""

    async def action(client: AdminClient) -> DomainOut:
        match = await _find_domain(client, name)
        return await client.verify_domain(match.id)

    done = run_with_client(action)
    typer.echo(f"domain {done.name}: verified")


def print_internal_ca() -> None:
    """Print the internal CA certificate (PEM) that edges in internal TLS mode issue with:
    trust it to reach the domains over HTTPS (``curl --cacert``)."""
    typer.echo(run_with_client(lambda client: client.internal_ca_certificate()), nl=False)


def set_rate_limit(
    name: NameArgument,
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
        raise fail("give --rps, or --clear", code=2)
    if burst is not None and rps is None:
        raise fail("--burst needs --rps", code=2)

    async def action(client: AdminClient) -> DomainOut:
        match = await _find_domain(client, name)
        if path is None:
            return await client.set_domain_rate_limit(match.id, rps, burst)
        kept = [x for x in match.path_rate_limits if x.path_prefix != path]
        if rps is not None:
            # not validated here: the operator refuses a bad prefix with a one-line 422
            kept.append(PathRateLimit.model_construct(path_prefix=path, rps=rps, burst=burst))
        return await client.set_domain_path_rate_limits(match.id, kept)

    done = run_with_client(action)
    typer.echo(f"domain {done.name}: {limits_text(done)}")


def set_edge_policy(
    name: NameArgument,
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
    policy = edge_policy(
        cors_origin=cors_origin,
        cors_credentials=cors_credentials,
        csp=csp,
        frame_options=frame_options,
        hsts_max_age=hsts_max_age,
    )
    if clear == bool(policy):
        raise fail("give --clear, or at least one policy option", code=2)

    async def action(client: AdminClient) -> DomainOut:
        match = await _find_domain(client, name)
        return await client.set_domain_edge_policy(match.id, policy)

    done = run_with_client(action)
    shown = done.edge_policy.model_dump(mode="json") if done.edge_policy else {}
    typer.echo(f"domain {done.name}: edge policy {json.dumps(shown)}")


def register(app: typer.Typer) -> None:
    domains = typer.Typer(help="Domains (hosts routed to apps).", no_args_is_help=True)
    domains.command("ls")(list_domains)
    domains.command("verify")(verify_domain)
    domains.command("ca")(print_internal_ca)
    domains.command("limit")(set_rate_limit)
    domains.command("policy")(set_edge_policy)
    app.add_typer(domains, name="domains")
