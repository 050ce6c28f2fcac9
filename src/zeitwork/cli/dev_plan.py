"""What ``zeitwork dev`` starts: one child process per service, its argv and environment,
the readiness probe of each, and the order they start and stop in. Pure: no I/O here.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

OPERATOR, AGENT, LB, EDGE = "operator", "node-agent", "load-balancer", "edge-proxy"
REGISTRY = "registry"
REGISTRY_BINARY = "docker-registry"
# the builder (builds from source) is not in these orders either: it starts after the edge
# when buildah is installed, and stops first
BUILDER = "builder"
# the platform's image store (an OCI registry) is not in these orders: it starts before the
# operator and stops after it, and only when ZEITWORK_REGISTRY_URL does not name another one
START_ORDER = (OPERATOR, AGENT, LB, EDGE)
STOP_ORDER = tuple(reversed(START_ORDER))  # edge, LB, agent (drains), operator
RELOAD_ON_HUP = (LB, EDGE)  # the services that reload on SIGHUP (dev passes its own on)

# variables that dev sets per child: the parent's values must not leak into the wrong service
_PER_CHILD = (
    "PORT",
    "HOST",
    "OPERATOR_URL",
    "OPERATOR_TOKEN",
    "ZEITWORK_JOIN_TOKEN",
    "ZEITWORK_LB_TOKEN",
    "ZEITWORK_PROXY_TOKEN",
    "LOAD_BALANCER_URL",
    "LB_BACKENDS",
)


@dataclass(frozen=True, slots=True)
class DevPorts:
    operator: int = 8080
    agent: int = 8081
    lb: int = 8082
    edge_http: int = 8083
    edge_https: int = 8443
    lb_admin: int = 9082
    edge_admin: int = 9083
    registry: int = 8084
    builder: int = 9085  # its /health and /metrics, on 127.0.0.1

    def listeners(self, host: str, *, registry: bool = True) -> list[tuple[str, str, int]]:
        """(option, address, port) of every listener; admin listeners (and the registry,
        which has no authentication in development) are on loopback."""
        own = [("--registry-port", "127.0.0.1", self.registry)] if registry else []
        return [
            *own,
            ("--operator-port", host, self.operator),
            ("--agent-port", host, self.agent),
            ("--lb-port", host, self.lb),
            ("--http-port", host, self.edge_http),
            ("--https-port", host, self.edge_https),
            ("--lb-admin-port", "127.0.0.1", self.lb_admin),
            ("--edge-admin-port", "127.0.0.1", self.edge_admin),
        ]

    def clashes(self) -> list[int]:
        """Ports given more than once (port 0 is not allowed: the summary names real ports)."""
        seen: set[int] = set()
        double: list[int] = []
        for port in (
            self.operator,
            self.agent,
            self.lb,
            self.edge_http,
            self.edge_https,
            self.lb_admin,
            self.edge_admin,
            self.registry,
        ):
            if port in seen and port not in double:
                double.append(port)
            seen.add(port)
        return double


@dataclass(frozen=True, slots=True)
class DevConfig:
    data_dir: Path
    ports: DevPorts = field(default_factory=DevPorts)
    host: str = "127.0.0.1"
    python: str = sys.executable
    # ZEITWORK_REGISTRY_URL from the user's environment: use that registry, run none
    external_registry: str | None = None

    @property
    def client_host(self) -> str:
        """Where clients on this machine connect (loopback when listening everywhere)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    def url(self, port: int) -> str:
        host = self.client_host
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def operator_url(self) -> str:
        return self.url(self.ports.operator)

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin-token"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "edge" / "ca" / "ca.crt"

    @property
    def runs_registry(self) -> bool:
        return self.external_registry is None

    @property
    def registry_host(self) -> str:
        """``host:port`` of the local registry (what ``skopeo copy docker://...`` names)."""
        return f"127.0.0.1:{self.ports.registry}"

    @property
    def registry_url(self) -> str:
        """ZEITWORK_REGISTRY_URL of the operator and the agent."""
        return self.external_registry or f"http://{self.registry_host}"

    @property
    def registry_dir(self) -> Path:
        return self.data_dir / "registry"

    @property
    def registry_config_file(self) -> Path:
        return self.registry_dir / "config.yml"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One service: how to run it and where it says it is ready."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    ready_url: str
    stop_timeout: float


def base_environment(parent: Mapping[str, str], config: DevConfig) -> dict[str, str]:
    """The parent's environment without per-service variables, plus the shared ones."""
    env = {k: v for k, v in parent.items() if k not in _PER_CHILD}
    env["ZEITWORK_DATA_DIR"] = str(config.data_dir)
    env.setdefault("ENVIRONMENT", "development")
    env["PYTHONUNBUFFERED"] = "1"
    env["ZEITWORK_REGISTRY_URL"] = config.registry_url
    return env


def registry_config(config: DevConfig, *, secret: str = "") -> str:
    """docker-registry's config.yml: filesystem storage under the data dir, loopback only,
    no authentication (development: only this machine reaches it), deletes allowed; a
    drain timeout, without which it dies of SIGTERM instead of exiting 0; ``secret`` signs
    its upload state (it warns when it has to make one up)."""
    lines = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {config.registry_dir / 'storage'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {config.registry_host}",
        "  draintimeout: 5s",
    ]
    if secret:
        lines.append(f"  secret: {secret}")
    return "\n".join(lines) + "\n"


def registry_spec(config: DevConfig, base: Mapping[str, str]) -> ChildSpec:
    # docker-registry reads REGISTRY_* variables as configuration: give it none of ours
    env = {k: v for k, v in base.items() if not k.startswith("REGISTRY_")}
    return ChildSpec(
        name=REGISTRY,
        argv=(REGISTRY_BINARY, "serve", str(config.registry_config_file)),
        env=env,
        ready_url=f"http://{config.registry_host}/v2/",
        stop_timeout=15.0,
    )


def operator_spec(config: DevConfig, base: Mapping[str, str]) -> ChildSpec:
    env = {**base, "PORT": str(config.ports.operator), "HOST": config.host}
    return ChildSpec(
        name=OPERATOR,
        argv=(config.python, "-m", "zeitwork", "operator"),
        env=env,
        ready_url=config.url(config.ports.operator) + "/health/ready",
        stop_timeout=30.0,
    )


def agent_spec(config: DevConfig, base: Mapping[str, str], *, join_token: str) -> ChildSpec:
    env = {
        **base,
        "PORT": str(config.ports.agent),
        "HOST": config.host,
        "OPERATOR_URL": config.operator_url,
        "ZEITWORK_JOIN_TOKEN": join_token,
    }
    return ChildSpec(
        name=AGENT,
        # --drain: in dev nothing is left running after Ctrl-C
        argv=(config.python, "-m", "zeitwork", "node-agent", "--drain"),
        env=env,
        ready_url=config.url(config.ports.agent) + "/health",
        stop_timeout=90.0,
    )


def lb_spec(config: DevConfig, base: Mapping[str, str], *, proxy_token: str) -> ChildSpec:
    env = {
        **base,
        "PORT": str(config.ports.lb),
        "HOST": config.host,
        "OPERATOR_URL": config.operator_url,
        "ZEITWORK_PROXY_TOKEN": proxy_token,
        "LB_ADMIN_HOST": "127.0.0.1",
        "LB_ADMIN_PORT": str(config.ports.lb_admin),
    }
    env.setdefault("LB_WORKERS", "1")
    # the edge connects from this address: its X-Forwarded-*/Forwarded name the real client
    # and scheme, so the balancer keeps them (everyone else's are still dropped)
    env.setdefault("LB_TRUSTED_PROXIES", config.client_host)
    return ChildSpec(
        name=LB,
        argv=(config.python, "-m", "zeitwork", "load-balancer"),
        env=env,
        ready_url=f"http://127.0.0.1:{config.ports.lb_admin}/health",
        stop_timeout=45.0,
    )


def edge_spec(config: DevConfig, base: Mapping[str, str], *, proxy_token: str) -> ChildSpec:
    env = {
        **base,
        "PORT": str(config.ports.edge_http),
        "HOST": config.host,
        "EDGE_HTTPS_PORT": str(config.ports.edge_https),
        "EDGE_ADMIN_HOST": "127.0.0.1",
        "EDGE_ADMIN_PORT": str(config.ports.edge_admin),
        "LOAD_BALANCER_URL": config.url(config.ports.lb),
        "OPERATOR_URL": config.operator_url,
        "ZEITWORK_PROXY_TOKEN": proxy_token,
    }
    env.setdefault("EDGE_TLS_MODE", "internal")
    # plain HTTP serves the apps in development (HTTPS is there too, with the internal CA)
    env.setdefault("EDGE_HTTPS_REDIRECT", "false")
    env.setdefault("EDGE_WORKERS", "1")
    return ChildSpec(
        name=EDGE,
        argv=(config.python, "-m", "zeitwork", "edge-proxy"),
        env=env,
        ready_url=f"http://127.0.0.1:{config.ports.edge_admin}/health",
        stop_timeout=45.0,
    )


HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def builder_spec(
    config: DevConfig, base: Mapping[str, str], *, builder_token: str, port: int | None = None
) -> ChildSpec:
    port = port or config.ports.builder
    env = {
        **base,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "OPERATOR_URL": config.operator_url,
        "ZEITWORK_BUILDER_TOKEN": builder_token,
    }
    env.setdefault("BUILDER_WORK_DIR", str(config.data_dir / "builder"))
    if HOST_CA_BUNDLE.is_file():  # RUN steps trust what this host trusts (a TLS proxy's CA)
        env.setdefault("BUILDER_CA_BUNDLE", str(HOST_CA_BUNDLE))
    return ChildSpec(
        name=BUILDER,
        argv=(config.python, "-m", "zeitwork", "builder"),
        env=env,
        ready_url=f"http://127.0.0.1:{port}/health",
        stop_timeout=45.0,
    )


def summary(config: DevConfig, *, admin_token_source: str) -> str:
    """What the user sees once everything is up."""
    p = config.ports
    lines = [
        "",
        "Zeitwork is running (development, one machine):",
        f"  operator API    {config.operator_url}/api/v1   (docs: {config.operator_url}/docs)",
        f"  web console     {config.operator_url}/   (sign in with the admin token)",
        f"  node agent      {config.url(p.agent)}",
        f"  load balancer   {config.url(p.lb)}   (admin http://127.0.0.1:{p.lb_admin})",
        f"  edge proxy      {config.url(p.edge_http)}   https://<host>:{p.edge_https}"
        f"   (admin http://127.0.0.1:{p.edge_admin})",
        f"  image registry  {registry_line(config)}",
        f"  builder         http://127.0.0.1:{p.builder}/health   (buildah; zeitwork builds)",
        f"  data            {config.data_dir}",
        f"  admin token     {admin_token_source}",
        f"  internal CA     {config.ca_file}   (curl --cacert ...)",
        "",
        "Next:",
        f"  export OPERATOR_URL={config.operator_url} ZEITWORK_DATA_DIR={config.data_dir}",
        "  zeitwork images import app.tar --name myapp        # an OCI archive",
        "  zeitwork deploy --image <id> --port 8080 --domain myapp.localhost",
        f"  skopeo copy --dest-tls-verify=false oci-archive:app.tar "
        f"docker://{registry_push_host(config)}/myapp:v2",
        f"  zeitwork deploy --app myapp --image {registry_push_host(config)}/myapp:v2",
        f"  curl -H 'Host: myapp.localhost' {config.url(p.edge_http)}/",
        "  zeitwork instances ls; zeitwork nodes ls",
        "",
        "Ctrl-C stops everything (edge, load balancer, agent with its instances, operator,",
        "registry).",
        "",
    ]
    return "\n".join(lines)


def registry_push_host(config: DevConfig) -> str:
    if config.external_registry is None:
        return config.registry_host
    return config.external_registry.split("://", 1)[-1].split("/", 1)[0]


def registry_line(config: DevConfig) -> str:
    if config.external_registry is not None:
        return f"{config.external_registry}   (ZEITWORK_REGISTRY_URL, not run by dev)"
    return f"{config.registry_url}   (docker-registry, storage {config.registry_dir})"
