"""The systemd units in deployments/systemd: valid for systemd, and hardened as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.deploy.unitfile import (
    SERVICES,
    UNIT_DIR,
    UnitFile,
    make_stub_executable,
    parse_unit,
    systemd_analyze,
    verify,
    with_exec_start,
)

needs_systemd_analyze = pytest.mark.skipif(
    systemd_analyze() is None, reason="systemd-analyze missing (Debian package systemd)"
)

SANDBOXED = ("operator", "load-balancer", "edge-proxy")

# Directives every sandboxed (non-root) service carries, with their exact value.
SANDBOX_DIRECTIVES = {
    "NoNewPrivileges": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
    "UMask": "0027",
}

# Directives that would give the agent its own mount namespace or a seccomp filter (inherited
# by every instance), or take away what it needs: see the comments in its unit.
AGENT_FORBIDDEN = (
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateNetwork",
    "PrivateMounts",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "TemporaryFileSystem",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectProc",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictSUIDSGID",
    "IPAddressDeny",
    "CapabilityBoundingSet",
    "SystemCallFilter",
    "SystemCallArchitectures",
    "MemoryDenyWriteExecute",
    "LockPersonality",
    "DynamicUser",
)


def unit_path(service: str) -> Path:
    return UNIT_DIR / f"zeitwork-{service}.service"


def load(service: str) -> UnitFile:
    return parse_unit(unit_path(service))


def test_one_unit_per_service_and_nothing_else() -> None:
    found = sorted(p.name for p in UNIT_DIR.glob("*.service"))
    assert found == sorted(f"zeitwork-{s}.service" for s in SERVICES)


# --- systemd-analyze verify -------------------------------------------------------------------


@pytest.fixture
def stub(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    return make_stub_executable(bin_dir)


def write_variant(tmp_path: Path, service: str, text: str) -> Path:
    path = tmp_path / f"zeitwork-{service}.service"
    path.write_text(text, encoding="utf-8")
    return path


@needs_systemd_analyze
@pytest.mark.parametrize("service", SERVICES)
def test_unit_passes_systemd_analyze_verify(tmp_path: Path, stub: Path, service: str) -> None:
    # verify insists that ExecStart's binary exists: point it at a stub, change nothing else.
    text = unit_path(service).read_text(encoding="utf-8")
    copy = write_variant(tmp_path, service, with_exec_start(text, stub))
    assert copy.read_text(encoding="utf-8").count(str(stub)) == 1
    ok, output = verify(copy)
    assert ok, output


# Each mutation breaks the operator's unit in one way that verify must catch.
BROKEN = {
    "bad value": ("\nProtectSystem=strict", "\nProtectSystem=bogus"),
    "unknown key": ("\nNoNewPrivileges=yes", "\nNoNewPrivilege=yes"),
    "bad restart policy": ("\nRestart=always", "\nRestart=sometimes"),
    "bad system call group": ("=@system-service", "=@no-such-group"),
    "bad address family": ("AF_INET6 AF_NETLINK", "AF_INET6 AF_BOGUS"),
    "bad limit": ("\nLimitNOFILE=65536", "\nLimitNOFILE=lots"),
    "misspelt section": ("[Service]", "[Servce]"),
    "no ExecStart": ("\nExecStart=", "\n#ExecStart="),
    "missing binary": ("__STUB__", "/nonexistent/zeitwork"),
}


@needs_systemd_analyze
@pytest.mark.parametrize("mutation", BROKEN)
def test_verify_rejects_a_broken_unit(tmp_path: Path, stub: Path, mutation: str) -> None:
    old, new = BROKEN[mutation]
    text = with_exec_start(unit_path("operator").read_text(encoding="utf-8"), stub)
    if old == "__STUB__":
        old = str(stub)
    assert old in text
    broken = write_variant(tmp_path, "operator", text.replace(old, new, 1))
    ok, output = verify(broken)
    assert not ok, f"verify accepted a unit with a {mutation}"
    assert output, "a rejected unit must say why"


# --- what every unit must say -----------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_unit_runs_the_installed_command_with_its_env_file(service: str) -> None:
    unit = load(service)
    assert unit.get("Service", "Type") == "exec"  # no READY=1 is sent: not notify
    assert unit.get("Service", "ExecStart") == f"/opt/zeitwork/bin/zeitwork {SERVICES[service]}"
    assert unit.get("Service", "EnvironmentFile") == f"/etc/zeitwork/{service}.env"
    assert unit.get("Service", "SyslogIdentifier") == f"zeitwork-{service}"
    assert unit.get("Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("service", SERVICES)
def test_unit_restarts_and_raises_limits(service: str) -> None:
    unit = load(service)
    assert unit.get("Service", "Restart") == "always"
    assert unit.get("Unit", "StartLimitIntervalSec") == "0"
    restart_sec = unit.get("Service", "RestartSec")
    assert restart_sec is not None and float(restart_sec) > 0
    # A configuration error (exit 2) is not retried forever.
    assert unit.get("Service", "RestartPreventExitStatus") == "2"
    assert unit.get("Service", "LimitNOFILE") == "65536"
    assert unit.get("Service", "NoNewPrivileges") == "yes"


@pytest.mark.parametrize("service", SERVICES)
def test_unit_waits_for_the_network(service: str) -> None:
    unit = load(service)
    assert "network-online.target" in unit.words("Unit", "After")
    assert "network-online.target" in unit.words("Unit", "Wants")


def test_operator_orders_after_a_local_postgresql_without_requiring_it() -> None:
    unit = load("operator")
    assert "postgresql.service" in unit.words("Unit", "After")
    assert "postgresql.service" in unit.words("Unit", "Wants")
    assert "postgresql.service" not in unit.words("Unit", "Requires")
    assert "postgresql.service" not in unit.words("Unit", "BindsTo")


def test_operator_gives_the_embedded_postgres_a_private_runtime_dir() -> None:
    unit = load("operator")
    assert unit.get("Service", "RuntimeDirectory") == "zeitwork-operator"
    assert unit.get("Service", "RuntimeDirectoryMode") == "0700"
    assert "XDG_RUNTIME_DIR=%t/zeitwork-operator" in unit.words("Service", "Environment")


# --- sandboxed services -----------------------------------------------------------------------


@pytest.mark.parametrize("service", SANDBOXED)
def test_sandboxed_unit_runs_as_zeitwork(service: str) -> None:
    unit = load(service)
    assert unit.get("Service", "User") == "zeitwork"
    assert unit.get("Service", "Group") == "zeitwork"
    assert not unit.has("Service", "DynamicUser")


@pytest.mark.parametrize("service", SANDBOXED)
def test_sandboxed_unit_has_every_hardening_directive(service: str) -> None:
    unit = load(service)
    wrong = {
        key: unit.get("Service", key)
        for key, value in SANDBOX_DIRECTIVES.items()
        if unit.get("Service", key) != value
    }
    assert wrong == {}, f"{service}: directives missing or different: {wrong}"


@pytest.mark.parametrize("service", SANDBOXED)
def test_sandboxed_unit_writes_only_data_and_logs(service: str) -> None:
    unit = load(service)
    assert unit.words("Service", "ReadWritePaths") == {"/var/lib/zeitwork", "/var/log/zeitwork"}


@pytest.mark.parametrize("service", SANDBOXED)
def test_sandboxed_unit_speaks_only_ip_and_unix_sockets(service: str) -> None:
    unit = load(service)
    assert unit.words("Service", "RestrictAddressFamilies") == {
        "AF_UNIX",
        "AF_INET",
        "AF_INET6",
        "AF_NETLINK",
    }


@pytest.mark.parametrize("service", ("operator", "load-balancer"))
def test_operator_and_load_balancer_have_no_capabilities(service: str) -> None:
    unit = load(service)
    # The empty assignment is present and nothing is granted after it.
    assert unit.has("Service", "CapabilityBoundingSet")
    assert unit.values("Service", "CapabilityBoundingSet") == []
    assert unit.values("Service", "AmbientCapabilities") == []


def test_edge_may_bind_low_ports_and_nothing_more() -> None:
    unit = load("edge-proxy")
    assert unit.values("Service", "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    assert unit.values("Service", "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]


# --- the node agent ---------------------------------------------------------------------------


def test_agent_runs_as_root() -> None:
    unit = load("node-agent")
    assert unit.get("Service", "User") == "root"
    assert not unit.has("Service", "DynamicUser")


def test_agent_stop_leaves_instances_running() -> None:
    unit = load("node-agent")
    assert unit.get("Service", "KillMode") == "process"
    assert unit.get("Service", "TasksMax") == "infinity"


def test_agent_has_nothing_that_breaks_instances_or_re_adoption() -> None:
    unit = load("node-agent")
    present = [key for key in AGENT_FORBIDDEN if unit.has("Service", key)]
    assert present == []


@pytest.mark.parametrize("service", SERVICES)
def test_only_the_agent_uses_killmode_process(service: str) -> None:
    mode = load(service).get("Service", "KillMode")
    if service == "node-agent":
        assert mode == "process"
    elif service == "builder":
        assert mode == "mixed"  # SIGTERM to the builder alone: its build drains first
    else:
        assert mode in (None, "control-group")


# --- the builder ------------------------------------------------------------------------------

# Seccomp filters and restrictions inherited by every RUN step that would break builds.
BUILDER_FORBIDDEN = (
    "SystemCallFilter",
    "MemoryDenyWriteExecute",
    "LockPersonality",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictSUIDSGID",
    "ProtectHostname",
    "PrivateDevices",
    "PrivateNetwork",
    "CapabilityBoundingSet",
    "DynamicUser",
)


def test_builder_runs_as_root_sandboxed_where_builds_allow() -> None:
    unit = load("builder")
    assert unit.get("Service", "User") == "root"
    assert [key for key in BUILDER_FORBIDDEN if unit.has("Service", key)] == []
    assert unit.get("Service", "ProtectSystem") == "strict"
    assert unit.words("Service", "ReadWritePaths") == {"/var/lib/zeitwork", "/var/log/zeitwork"}
    assert unit.get("Service", "PrivateTmp") == "yes"
    assert unit.get("Service", "ProtectHome") == "yes"
    # the stop waits out the drain (BUILDER_DRAIN_TIMEOUT, 30 s) and the kill's grace
    timeout = unit.get("Service", "TimeoutStopSec")
    assert timeout is not None and float(timeout) >= 40


# --- the CLI has the commands the units run ---------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_unit_command_exists_in_the_cli(service: str) -> None:
    from typer.main import get_command
    from typer.testing import CliRunner

    from zeitwork.cli.main import app

    command = SERVICES[service]
    names = set(get_command(app).commands)  # type: ignore[attr-defined]
    if command not in names:
        pytest.skip(f"`zeitwork {command}` is not registered yet (its issue has not landed)")
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
