"""``zeitwork dev``: the whole platform on this machine with embedded defaults.

Starts the operator (embedded PostgreSQL under ``ZEITWORK_DATA_DIR`` unless DATABASE_URL is
set), waits until it is ready, reads its admin token, creates a join token and a proxy token
through the API, then starts the node agent (runtime ``auto``: ``oci`` with runc where KVM is
missing), the load balancer and the edge proxy, each a supervised child process whose output
is prefixed with its name. Before the operator it starts the platform's image registry
(Debian's ``docker-registry`` on 127.0.0.1, storage under ``<data dir>/registry``) and sets
``ZEITWORK_REGISTRY_URL`` for every service, unless that variable names a registry already.
Ctrl-C or SIGTERM stops them in order: edge, load balancer, agent
(with ``--drain``: no instance is left running), operator. A child that dies stops the
platform and the command exits 1. ``--demo`` deploys a demo app at ``demo.localhost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from zeitwork.cli.demo import DemoFailed, demo_commands, run_demo
from zeitwork.cli.dev_plan import (
    AGENT,
    BUILDER,
    REGISTRY,
    REGISTRY_BINARY,
    RELOAD_ON_HUP,
    STOP_ORDER,
    DevConfig,
    DevPorts,
    agent_spec,
    base_environment,
    builder_spec,
    edge_spec,
    lb_spec,
    operator_spec,
    registry_config,
    registry_spec,
    summary,
)
from zeitwork.cli.supervisor import Child, ChildFailed, ChildSupervisor
from zeitwork.clients.admin import AdminClient
from zeitwork.core.errors import AuthenticationRequired, ZeitworkError
from zeitwork.core.states import NodeState
from zeitwork.settings import default_data_dir

_T = TypeVar("_T")


class _Stopped(Exception):
    """Ctrl-C / SIGTERM arrived while the platform was starting."""


def _say(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # stdout closed (`| head`): carry on
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def preflight(*, euid: int, runtime: str, registry: bool = False) -> str | None:
    """Why ``zeitwork dev`` cannot run here, or None (``registry``: dev runs its own)."""
    if euid != 0:
        return (
            "zeitwork dev runs a node agent, which needs root (network namespaces, cgroups, "
            "runc). Run it as root, e.g.: sudo .venv/bin/zeitwork dev"
        )
    if shutil.which(runtime) is None:
        return f"{runtime} is not installed (apt-get install {runtime}); the oci runtime needs it"
    if shutil.which("umoci") is None:
        return "umoci is not installed (apt-get install umoci); images are unpacked with it"
    if registry and shutil.which(REGISTRY_BINARY) is None:
        return (
            f"{REGISTRY_BINARY} is not installed (apt-get install docker-registry): dev runs "
            "it as the platform's image store; or set ZEITWORK_REGISTRY_URL to a registry"
        )
    return None


def _write_registry_config(config: DevConfig) -> None:
    config.registry_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(config.registry_config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(registry_config(config, secret=secrets.token_hex(16)))


def _any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ports_in_use(listeners: list[tuple[str, str, int]]) -> list[str]:
    """The listeners whose port something else already holds (probed by binding)."""
    busy = []
    for option, host, port in listeners:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # as the services bind: a port in TIME_WAIT after a previous run is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                busy.append(f"{option} {port} ({host}: {exc.strerror})")
    return busy


async def _admin_token(
    config: DevConfig, parent: Mapping[str, str], operator: Child, within: float
) -> tuple[str, str]:
    """The admin token and where it came from: ZEITWORK_ADMIN_TOKEN or the data-dir file
    that the operator writes on its first start."""
    explicit = parent.get("ZEITWORK_ADMIN_TOKEN", "").strip()
    if explicit:
        return explicit, "ZEITWORK_ADMIN_TOKEN (from your environment)"
    path = config.admin_token_file
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with contextlib.suppress(FileNotFoundError):
            secret = path.read_text().strip()
            if secret:
                return secret, f"{path}   (cat it; mode 0600)"
        if not operator.running:
            raise ChildFailed("operator exited before writing its admin token")
        if loop.time() > deadline:
            raise ChildFailed(
                f"no admin token in {path}: set ZEITWORK_ADMIN_TOKEN, or create one with "
                f"ZEITWORK_DATA_DIR={config.data_dir} zeitwork token create --scope admin"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(operator.process.wait(), 0.1)


async def _bring_up(
    sup: ChildSupervisor,
    config: DevConfig,
    parent: Mapping[str, str],
    *,
    demo: bool,
    within: float,
    credentials: list[str],
    revoke: list[uuid.UUID],
) -> None:
    """Start everything in order; ``credentials`` receives the admin token and ``revoke``
    the ids of tokens made for this run (revoked when it stops)."""
    base = base_environment(parent, config)
    if config.runs_registry:
        await asyncio.to_thread(_write_registry_config, config)
        registry = await sup.start(registry_spec(config, base))
        await sup.wait_ready(registry, within=within)
    operator = await sup.start(operator_spec(config, base))
    await sup.wait_ready(operator, within=within)
    token, token_source = await _admin_token(config, parent, operator, within=30.0)
    credentials.append(token)
    async with AdminClient(base_url=config.operator_url, token=token) as client:
        try:
            join = await client.create_token("join", name="zeitwork dev: node agent")
            proxy = await client.create_token("proxy", name="zeitwork dev: load balancer, edge")
        except AuthenticationRequired:
            raise ChildFailed(
                f"the operator refuses the admin token from {token_source.split()[0]}: "
                "set ZEITWORK_ADMIN_TOKEN to a valid admin token"
            ) from None
        revoke.append(proxy.id)
        since = datetime.now(UTC)
        agent = await sup.start(agent_spec(config, base, join_token=join.token))
        await sup.wait_ready(agent, within=within)
        await _wait_node_ready(client, agent, since=since, within=within)
        await client.revoke_token(join.id)  # the agent holds its own node credential now
        lb = await sup.start(lb_spec(config, base, proxy_token=proxy.token))
        await sup.wait_ready(lb, within=within)
        edge = await sup.start(edge_spec(config, base, proxy_token=proxy.token))
        await sup.wait_ready(edge, within=within)
        if shutil.which("buildah") is not None:  # builds from source (zeitwork deploy in a dir)
            build = await client.create_token("builder", name="zeitwork dev: builder")
            revoke.append(build.id)
            port = config.ports.builder  # its health port: any free one when that is taken
            if ports_in_use([("builder", "127.0.0.1", port)]):
                port = _any_free_port()
            spec = builder_spec(config, base, builder_token=build.token, port=port)
            builder = await sup.start(spec)
            await sup.wait_ready(builder, within=within)
        else:
            _say("dev: buildah is not installed: no builder (deploy images with --image)")
        _say(summary(config, admin_token_source=token_source))
        if demo:
            try:
                await run_demo(
                    client,
                    work_dir=config.data_dir / "demo",
                    edge_url=config.url(config.ports.edge_http),
                    say=_say,
                )
            except (DemoFailed, ZeitworkError) as exc:
                raise ChildFailed(f"demo: {exc}") from None
            _say(
                demo_commands(
                    edge_http=config.url(config.ports.edge_http),
                    https_port=config.ports.edge_https,
                    ca_file=config.ca_file,
                )
            )


async def _wait_node_ready(
    client: AdminClient, agent: Child, *, since: datetime, within: float
) -> None:
    """Until a node is ready with a heartbeat after ``since`` (this run's agent, not a node
    record left ``ready`` by a previous run)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        nodes = await client.nodes()
        if any(
            n.state is NodeState.READY and (n.last_heartbeat_at or since) > since for n in nodes
        ):
            return
        if not agent.running:
            raise ChildFailed(f"node-agent exited with status {agent.process.returncode}")
        if loop.time() > deadline:
            raise ChildFailed(f"the node agent did not register as ready within {within:.0f} s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(agent.process.wait(), 0.2)


async def _revoke(config: DevConfig, admin_token: str, token_ids: list[uuid.UUID]) -> None:
    """Revoke the tokens made for this run (best effort: the operator may be gone)."""
    try:
        async with AdminClient(base_url=config.operator_url, token=admin_token) as client:
            for token_id in token_ids:
                await client.revoke_token(token_id)
    except ZeitworkError as exc:
        _say(f"dev: could not revoke this run's proxy token: {exc.detail}")


async def _until_stopped(work: Awaitable[_T], stop: asyncio.Event, sup: ChildSupervisor) -> _T:
    """Run ``work`` unless Ctrl-C/SIGTERM or a child's exit comes first."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    exited = asyncio.create_task(sup.exited.wait())
    try:
        await asyncio.wait({task, stopper, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        exited.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if stop.is_set():
        raise _Stopped
    crashed = sup.crashed()
    names = ", ".join(f"{c.name} (status {c.process.returncode})" for c in crashed)
    raise ChildFailed(f"{names or 'a service'} exited unexpectedly")


async def run_dev(
    config: DevConfig, *, parent: Mapping[str, str], demo: bool, within: float
) -> int:
    sup = ChildSupervisor()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set() and not sup.hurry.is_set():
            _say("dev: asked again: killing the services now (instances may keep running)")
            sup.hurry.set()
        stop.set()

    def on_hangup() -> None:
        sent = sup.reload(RELOAD_ON_HUP)
        _say("dev: SIGHUP: reloading " + (", ".join(sent) or "nothing (not started yet)"))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    status = 0
    credentials: list[str] = []
    revoke: list[uuid.UUID] = []
    try:
        await _until_stopped(
            _bring_up(
                sup,
                config,
                parent,
                demo=demo,
                within=within,
                credentials=credentials,
                revoke=revoke,
            ),
            stop,
            sup,
        )
        await _until_stopped(stop.wait(), stop, sup)
    except _Stopped:
        _say("\ndev: stopping (Ctrl-C / SIGTERM)")
    except ChildFailed as exc:
        _say(f"\ndev: FAILED: {exc}; stopping the platform")
        status = 1
    except ZeitworkError as exc:  # the operator refused or failed a call of ours
        _say(f"\ndev: FAILED: {exc.detail}; stopping the platform")
        status = 1
    finally:
        codes = await sup.stop_all((BUILDER, *STOP_ORDER[:-1]))
        if credentials and revoke:
            await _revoke(config, credentials[0], revoke)
        codes.update(await sup.stop_all(STOP_ORDER[-1:]))
        codes.update(await sup.stop_all((REGISTRY,)))  # the image store goes last
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    unclean = {n: c for n, c in codes.items() if c not in (0, None)}
    if unclean:
        _say("dev: stopped; exit statuses: " + ", ".join(f"{n}={c}" for n, c in unclean.items()))
        if AGENT in unclean:
            _say(
                "dev: WARNING: the node agent did not drain cleanly; instances may still run "
                "(the next `zeitwork dev` re-adopts or cleans them up)"
            )
        return status or 1
    _say("dev: stopped")
    return status


def register(app: typer.Typer) -> None:
    @app.command("dev")
    def dev(
        *,
        demo: Annotated[
            bool, typer.Option("--demo", help="Deploy a demo app at demo.localhost.")
        ] = False,
        data_dir: Annotated[
            Path | None,
            typer.Option(
                "--data-dir",
                envvar="ZEITWORK_DATA_DIR",
                help="State of every service (default ~/.local/share/zeitwork).",
            ),
        ] = None,
        host: Annotated[
            str, typer.Option("--host", help="Address the services listen on.")
        ] = "127.0.0.1",
        operator_port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
        agent_port: Annotated[int, typer.Option(min=1, max=65535)] = 8081,
        lb_port: Annotated[int, typer.Option(min=1, max=65535)] = 8082,
        http_port: Annotated[int, typer.Option(min=1, max=65535, help="Edge plain HTTP.")] = 8083,
        https_port: Annotated[int, typer.Option(min=1, max=65535, help="Edge HTTPS.")] = 8443,
        lb_admin_port: Annotated[int, typer.Option(min=1, max=65535)] = 9082,
        edge_admin_port: Annotated[int, typer.Option(min=1, max=65535)] = 9083,
        registry_port: Annotated[
            int,
            typer.Option(
                min=1,
                max=65535,
                help="The local image registry (127.0.0.1; not run when "
                "ZEITWORK_REGISTRY_URL names one).",
            ),
        ] = 8084,
        within: Annotated[
            float,
            typer.Option("--timeout", min=1, help="Seconds each service may take to become ready."),
        ] = 120.0,
    ) -> None:
        """Run the whole platform on this machine (operator with an embedded PostgreSQL,
        node agent, load balancer, edge proxy). Ctrl-C stops it all. Needs root."""
        ports = DevPorts(
            operator=operator_port,
            agent=agent_port,
            lb=lb_port,
            edge_http=http_port,
            edge_https=https_port,
            lb_admin=lb_admin_port,
            edge_admin=edge_admin_port,
            registry=registry_port,
        )
        if clashes := ports.clashes():
            typer.echo(f"zeitwork: port(s) {clashes} given to more than one service", err=True)
            raise typer.Exit(2)
        parent = dict(os.environ)
        external_registry = parent.get("ZEITWORK_REGISTRY_URL", "").strip() or None
        problem = preflight(
            euid=os.geteuid(),
            runtime=parent.get("ZEITWORK_OCI_RUNTIME", "runc") or "runc",
            registry=external_registry is None,
        )
        if problem:
            typer.echo(f"zeitwork: {problem}", err=True)
            raise typer.Exit(2)
        if busy := ports_in_use(ports.listeners(host, registry=external_registry is None)):
            typer.echo(
                "zeitwork: port(s) in use (another `zeitwork dev` or service?): "
                + ", ".join(busy)
                + "; choose others with the options named",
                err=True,
            )
            raise typer.Exit(2)
        config = DevConfig(
            data_dir=(data_dir or default_data_dir()).expanduser().absolute(),
            ports=ports,
            host=host,
            external_registry=external_registry,
        )
        raise typer.Exit(asyncio.run(run_dev(config, parent=parent, demo=demo, within=within)))
