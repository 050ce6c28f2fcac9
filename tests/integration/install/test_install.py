"""scripts/install.sh and scripts/uninstall.sh, for real, into a temporary root.

The ZEITWORK_* variables move every path into a temporary directory and name a throwaway
system user (zwt + random hex), which the test deletes again. The install builds the wheel
from this checkout and installs it with its dependencies into a real virtualenv (about 15 s
with pip's cache), so the installed `zeitwork` command runs. systemd is not running here, so
daemon-reload is skipped (the script says so); the installed units are checked with
`systemd-analyze verify` instead.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.install.seccomp import UNISTD, policy_for
from tests.unit.deploy.unitfile import (
    REPO,
    SERVICES,
    UNIT_DIR,
    parse_unit,
    systemd_analyze,
    verify,
)

IS_ROOT = os.geteuid() == 0
INSTALL = REPO / "scripts" / "install.sh"
UNINSTALL = REPO / "scripts" / "uninstall.sh"


@dataclass
class Root:
    base: Path
    user: str

    @property
    def prefix(self) -> Path:
        return self.base / "opt" / "zeitwork"

    @property
    def etc(self) -> Path:
        return self.base / "etc" / "zeitwork"

    @property
    def var(self) -> Path:
        return self.base / "var" / "lib" / "zeitwork"

    @property
    def log(self) -> Path:
        return self.base / "var" / "log" / "zeitwork"

    @property
    def units(self) -> Path:
        return self.base / "etc" / "systemd" / "system"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ZEITWORK_PREFIX=str(self.prefix),
            ZEITWORK_ETC=str(self.etc),
            ZEITWORK_VAR=str(self.var),
            ZEITWORK_LOG=str(self.log),
            ZEITWORK_SYSTEMD_DIR=str(self.units),
            ZEITWORK_USER=self.user,
        )
        return env


def run(
    script: Path, root: Root, *args: str, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(script), *args],
        env=root.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        umask=0o077,  # a hardened root umask must not make the install unreadable
    )
    if check:
        assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def remove_user(name: str) -> None:
    if IS_ROOT and user_exists(name):
        subprocess.run(["userdel", name], check=False, capture_output=True)
    if IS_ROOT:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def snapshot(*dirs: Path) -> dict[str, bytes]:
    files = {}
    for directory in dirs:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                files[str(path)] = path.read_bytes()
    return files


def new_root() -> Root:
    base = Path(tempfile.mkdtemp(prefix="zeitwork-install-"))
    return Root(base=base, user="zwt" + uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def installed() -> Iterator[Root]:
    root = new_root()
    try:
        proc = run(INSTALL, root)
        root.base.joinpath("install.log").write_text(proc.stdout + proc.stderr)
        yield root
    finally:
        subprocess.run(
            ["bash", str(UNINSTALL), "--purge"], env=root.env(), capture_output=True, check=False
        )
        remove_user(root.user)
        shutil.rmtree(root.base, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- a fresh install --------------------------------------------------------------------------


def test_install_creates_the_virtualenv_with_the_command(installed: Root) -> None:
    zeitwork = installed.prefix / "bin" / "zeitwork"
    assert os.access(zeitwork, os.X_OK)
    version = subprocess.run(
        [str(zeitwork), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert version.stdout.strip().startswith("zeitwork ")
    # The package came from a wheel, not an editable link back into the checkout.
    where = subprocess.run(
        [
            str(installed.prefix / "bin" / "python"),
            "-c",
            "import zeitwork, zeitwork.proxy.server as s; print(zeitwork.__file__, s.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    package, proxy_core = where.stdout.split()
    assert package.startswith(str(installed.prefix))
    # The production install compiles the proxy core (mypyc) when a C compiler is there.
    if shutil.which("cc"):
        assert proxy_core.endswith(".so"), proxy_core
    assert (installed.prefix / "share" / "zeitwork" / "config" / "operator.env").is_file()
    # The units' Documentation= points here.
    assert (installed.prefix / "share" / "doc" / "zeitwork" / "production.md").is_file()


def test_install_adds_zeitwork_env_for_the_chosen_paths(installed: Root) -> None:
    helper = installed.prefix / "bin" / "zeitwork-env"
    assert mode(helper) == 0o755
    text = helper.read_text()
    assert f"PREFIX={installed.prefix}\n" in text
    assert f"ETC={installed.etc}\n" in text
    assert f"SVC_USER={installed.user}\n" in text
    bad = subprocess.run(
        [str(helper), "nonsense", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2
    assert "unknown service" in bad.stderr


def test_install_writes_env_files_with_the_chosen_paths(installed: Root) -> None:
    for service in SERVICES:
        env_file = installed.etc / f"{service}.env"
        assert env_file.is_file()
        assert mode(env_file) == 0o600  # tokens and passwords: root only
        text = env_file.read_text()
        assert f"ZEITWORK_DATA_DIR={installed.var}/{service}\n" in text
        assert "/var/lib/zeitwork" not in text.replace(str(installed.var), "")
        assert not (installed.etc / f"{service}.env.new").exists()


def test_install_creates_data_and_log_directories(installed: Root) -> None:
    assert mode(installed.var) == 0o750
    assert mode(installed.log) == 0o750
    for service in ("operator", "load-balancer", "edge-proxy"):
        assert mode(installed.var / service) == 0o750
    assert mode(installed.var / "node-agent") == 0o700
    assert mode(installed.var / "builder") == 0o700  # root's, as the builder runs as root
    if IS_ROOT:
        account = pwd.getpwnam(installed.user)
        for path in (installed.var, installed.log, installed.var / "operator"):
            assert path.stat().st_uid == account.pw_uid, path
            assert path.stat().st_gid == account.pw_gid, path
        assert (installed.var / "node-agent").stat().st_uid == 0
        assert installed.etc.joinpath("operator.env").stat().st_uid == 0


@pytest.mark.skipif(not IS_ROOT, reason="creating a system user needs root")
def test_install_creates_a_system_user_without_login(installed: Root) -> None:
    account = pwd.getpwnam(installed.user)
    assert account.pw_dir == str(installed.var)
    assert account.pw_shell.endswith("nologin")
    assert account.pw_uid < 1000  # a system account


def test_install_puts_units_with_the_chosen_paths(installed: Root) -> None:
    for service, command in SERVICES.items():
        unit = parse_unit(installed.units / f"zeitwork-{service}.service")
        assert mode(unit.path) == 0o644
        assert unit.get("Service", "ExecStart") == f"{installed.prefix}/bin/zeitwork {command}"
        assert unit.get("Service", "EnvironmentFile") == f"{installed.etc}/{service}.env"
        expected_user = "root" if service in ("node-agent", "builder") else installed.user
        assert unit.get("Service", "User") == expected_user
        if service != "node-agent":
            assert unit.words("Service", "ReadWritePaths") == {
                str(installed.var),
                str(installed.log),
            }


@pytest.mark.skipif(systemd_analyze() is None, reason="systemd-analyze missing")
def test_installed_units_pass_systemd_analyze_verify(installed: Root) -> None:
    # Unchanged installed files: their ExecStart is the installed command, which exists.
    ok, output = verify(*sorted(installed.units.glob("zeitwork-*.service")))
    assert ok, output


def test_install_reports_that_systemd_is_not_reloaded_for_a_staging_root(installed: Root) -> None:
    log = (installed.base / "install.log").read_text()
    assert "no daemon-reload" in log


# --- the installed services run as their units would run them -------------------------------

SANDBOX = Path(__file__).with_name("sandbox.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # runs sandbox.py; the service itself runs from the venv

needs_seccomp_emulation = pytest.mark.skipif(
    systemd_analyze() is None or not UNISTD.exists() or not Path(SYSTEM_PYTHON).exists(),
    reason="needs systemd-analyze, kernel headers (linux-libc-dev) and /usr/bin/python3",
)


def write_policy(unit_file: Path, directory: Path) -> Path:
    """sandbox.py's policy from a unit's NoNewPrivileges, MDWE and seccomp settings."""
    policy = directory / f"{unit_file.stem}.policy.json"
    policy.write_text(json.dumps(policy_for(parse_unit(unit_file))))
    policy.chmod(0o644)
    return policy


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_env_file(path: Path) -> dict[str, str]:
    """The active KEY=value lines, as systemd's EnvironmentFile= reads these simple files."""
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = value
    return env


class ServiceRunner:
    """Starts an installed service as the zeitwork user with its unit's environment."""

    def __init__(self, root: Root, runtime_dir: Path) -> None:
        self.root = root
        self.runtime_dir = runtime_dir
        self.account = pwd.getpwnam(root.user)
        self.sandbox = root.base / "sandbox.py"
        shutil.copyfile(SANDBOX, self.sandbox)
        self.sandbox.chmod(0o644)
        self.procs: list[subprocess.Popen[bytes]] = []

    def environment(self, service: str, overrides: dict[str, str]) -> dict[str, str]:
        unit = parse_unit(self.root.units / f"zeitwork-{service}.service")
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": self.account.pw_dir,
            "USER": self.root.user,
            "LOGNAME": self.root.user,
        }
        for word in unit.words("Service", "Environment"):
            key, _, value = word.partition("=")
            env[key] = value.replace("%t", str(self.runtime_dir))
        # RuntimeDirectory=: made by systemd, owned by the service user, 0700.
        for name in unit.values("Service", "RuntimeDirectory"):
            path = self.runtime_dir / name
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, self.account.pw_uid, self.account.pw_gid)
            path.chmod(0o700)
        env.update(read_env_file(Path(unit.get("Service", "EnvironmentFile") or "")))
        env.update(overrides)
        return env

    def command(self, service: str) -> list[str]:
        unit = parse_unit(self.root.units / f"zeitwork-{service}.service")
        exec_start = (unit.get("Service", "ExecStart") or "").split()
        policy = write_policy(unit.path, self.root.base)
        return [SYSTEM_PYTHON, str(self.sandbox), str(policy), *exec_start]

    def start(self, service: str, overrides: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                self.command(service),
                env=self.environment(service, overrides),
                user=self.account.pw_uid,
                group=self.account.pw_gid,
                extra_groups=[],
                cwd="/",
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[int]:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=45))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait(timeout=10))
        return codes


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> str:
    import time
    import urllib.error

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: the service exited with {proc.returncode}:\n{log.read_text()}")
        try:
            status, body = get(url)
            if status == 200:
                return body
            last = f"{status} {body}"
        except (urllib.error.URLError, OSError) as exc:
            last = repr(exc)
        time.sleep(0.1)
    pytest.fail(f"{url} not ready within {timeout} s ({last}):\n{log.read_text()}")


# Each probe: what it prints outside the sandbox and inside it (run as nobody either way, so
# nothing a probe tries can touch the machine). ptrace is outside @system-service; clone3 is
# called with bad arguments (EINVAL outside, ENOSYS when namespaces are restricted).
PROBE = """\
import ctypes, errno, mmap, os, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def err(code): return errno.errorcode.get(code, str(code))
out = {}
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    out["wx_mapping"] = "ok"
except OSError as exc:
    out["wx_mapping"] = err(exc.errno)
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
    out["packet_socket"] = "ok"
except OSError as exc:
    out["packet_socket"] = err(exc.errno)
socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
out["inet6_socket"] = "ok"
pid = os.fork()
if pid == 0:
    os._exit(0 if libc.ptrace(0, 0, None, None) == 0 else ctypes.get_errno())
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
out["ptrace"] = "ok" if code == 0 else err(code)
libc.syscall(435, None, 0)
out["clone3"] = err(ctypes.get_errno())
out["spawn"] = str(subprocess.run(["/bin/true"], check=False).returncode)
print(out)
"""


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the probe as nobody")
@needs_seccomp_emulation
def test_sandbox_emulation_enforces_the_units_policy(tmp_path: Path) -> None:
    """The emulated sandbox the fleet test uses really restricts: a probe as nobody, without
    and with the operator unit's policy, sees the differences the unit's settings promise."""
    import ast

    work = Path(tempfile.mkdtemp(prefix="zeitwork-probe-"))
    try:
        work.chmod(0o755)
        probe = work / "probe.py"
        probe.write_text(PROBE)
        sandbox = work / "sandbox.py"
        shutil.copyfile(SANDBOX, sandbox)
        for path in (probe, sandbox):
            path.chmod(0o644)
        policy = write_policy(UNIT_DIR / "zeitwork-operator.service", work)
        as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

        def run_probe(*wrapper: str) -> dict[str, str]:
            proc = subprocess.run(
                [*as_nobody, *wrapper, SYSTEM_PYTHON, str(probe)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                cwd="/",
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
            result: dict[str, str] = ast.literal_eval(proc.stdout.strip())
            return result

        outside = run_probe()
        inside = run_probe(SYSTEM_PYTHON, str(sandbox), str(policy))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert outside["wx_mapping"] == "ok" and inside["wx_mapping"] == "EACCES"
    assert outside["packet_socket"] == "EPERM" and inside["packet_socket"] == "EAFNOSUPPORT"
    assert outside["inet6_socket"] == inside["inet6_socket"] == "ok"
    assert outside["ptrace"] == "ok" and inside["ptrace"] == "EPERM"
    assert outside["clone3"] != "ENOSYS" and inside["clone3"] == "ENOSYS"
    assert outside["spawn"] == inside["spawn"] == "0"


@pytest.mark.skipif(not IS_ROOT, reason="runs the services as the throwaway system user")
@needs_seccomp_emulation
def test_installed_fleet_serves_as_the_service_user_under_the_sandbox(
    installed: Root, tmp_path: Path
) -> None:
    """operator -> load balancer -> edge, from the installed venv with the shipped env files,
    as the zeitwork user with no capabilities, under each installed unit's NoNewPrivileges,
    MemoryDenyWriteExecute and seccomp settings (sandbox.py: system call allow list,
    address families, namespaces, native architecture).

    Only the ports and the listening address differ from the shipped files (tests use free
    ports on loopback). The operator uses its embedded PostgreSQL, migrated first with
    `zeitwork migrate` as docs/production.md says (ENVIRONMENT=production does not migrate).
    """
    for path in (installed.base, installed.base / "opt", installed.base / "var"):
        path.chmod(0o755)  # mkdtemp made the root 0700; the service user must reach /opt
    runtime = tmp_path / "run"
    runtime.mkdir()
    runtime.chmod(0o755)
    runner = ServiceRunner(installed, runtime)
    op_port, lb_port, lb_admin, edge_http, edge_https, edge_admin = (free_port() for _ in range(6))
    local = {"HOST": "127.0.0.1"}
    zeitwork_env = str(installed.prefix / "bin" / "zeitwork-env")
    try:
        # As docs/production.md says: migrate with the operator's env file, as its user.
        migrated = subprocess.run(
            [zeitwork_env, "operator", "migrate"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert "database at revision" in migrated.stdout

        op_log, lb_log, edge_log = tmp_path / "op.log", tmp_path / "lb.log", tmp_path / "edge.log"
        op = runner.start("operator", {**local, "PORT": str(op_port)}, op_log)
        lb = runner.start(
            "load-balancer",
            {
                **local,
                "PORT": str(lb_port),
                "LB_ADMIN_PORT": str(lb_admin),
                "LB_BACKENDS": f"127.0.0.1:{op_port}",
            },
            lb_log,
        )
        edge = runner.start(
            "edge-proxy",
            {
                **local,
                "PORT": str(edge_http),
                "EDGE_HTTPS_PORT": str(edge_https),
                "EDGE_ADMIN_PORT": str(edge_admin),
                "LOAD_BALANCER_URL": f"http://127.0.0.1:{lb_port}",
            },
            edge_log,
        )
        assert '"ready"' in wait_for(f"http://127.0.0.1:{op_port}/health/ready", op, op_log)
        wait_for(f"http://127.0.0.1:{lb_admin}/health", lb, lb_log)
        wait_for(f"http://127.0.0.1:{edge_admin}/health", edge, edge_log)

        # The operator wrote its first admin token into its data dir, as the service user.
        token = installed.var / "operator" / "admin-token"
        assert mode(token) == 0o600
        assert token.stat().st_uid == runner.account.pw_uid

        # A join token made with zeitwork-env while the operator runs is one the API lists.
        created = subprocess.run(
            [zeitwork_env, "operator", "token", "create", "--scope", "join", "--name", "node-t"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        admin = token.read_text().strip()
        status, listing = get(
            f"http://127.0.0.1:{op_port}/api/v1/tokens?scope=join",
            {"Authorization": f"Bearer {admin}"},
        )
        assert status == 200, listing
        assert '"node-t"' in listing

        # A request through the edge and the load balancer reaches the operator.
        body = wait_for(f"http://127.0.0.1:{edge_http}/health", edge, edge_log)
        assert '"service":"operator"' in body.replace(" ", "")
        # JSON logs in production, from every service.
        for log in (op_log, lb_log, edge_log):
            first = log.read_text().splitlines()[0]
            assert first.startswith("{") and '"environment": "production"' in first, first
    finally:
        codes = runner.stop_all()
    # SIGTERM stops each service cleanly, and the embedded PostgreSQL with the operator.
    assert codes == [0, 0, 0], codes
    assert not (installed.var / "operator" / "postgres" / "postmaster.pid").exists()


# --- again, upgrade, uninstall, purge (in this order, on the same root) ----------------------


def copy_checkout(destination: Path) -> Path:
    """The parts of the checkout install.sh needs, to change templates without touching REPO."""
    for name in ("src", "scripts", "deployments", "docs"):
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name,
                destination / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
    for name in ("pyproject.toml", "README.md", "hatch_build.py"):
        shutil.copy2(REPO / name, destination / name)
    return destination


def test_reinstall_upgrade_uninstall_and_purge(
    installed: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first install (the fixture) compiled the proxy core; these three re-installs test
    # the configuration handling and skip the ~17 s mypyc build each (the opt-out path).
    monkeypatch.setenv("ZEITWORK_PURE_PYTHON", "1")
    operator_env = installed.etc / "operator.env"
    lb_env = installed.etc / "load-balancer.env"

    # 1. The admin edits one env file; installing again keeps it and changes nothing else.
    edited = operator_env.read_text() + "DATABASE_URL=postgresql://zw@db.test/zeitwork\n"
    operator_env.write_text(edited)
    before = snapshot(installed.etc, installed.units)
    run(INSTALL, installed)
    assert operator_env.read_text() == edited
    assert snapshot(installed.etc, installed.units) == before  # no .env.new: nothing new

    # 2. An upgrade whose templates changed: the edited file is kept and the new template goes
    #    beside it; the file nobody edited follows the new template.
    checkout = copy_checkout(tmp_path / "checkout")
    for service in ("operator", "load-balancer"):
        template = checkout / "deployments" / "config" / f"{service}.env"
        template.write_text(template.read_text() + "# A line added by the upgrade.\n")
    proc = run(checkout / "scripts" / "install.sh", installed)
    assert operator_env.read_text() == edited
    offered = installed.etc / "operator.env.new"
    assert offered.read_text().endswith("# A line added by the upgrade.\n")
    assert mode(offered) == 0o600
    assert "kept your edited" in proc.stdout
    assert lb_env.read_text().endswith("# A line added by the upgrade.\n")
    assert not (installed.etc / "load-balancer.env.new").exists()

    # 3. Uninstall removes the units, the virtualenv and the offered templates; it keeps the
    #    env files, the data, the logs and the user.
    data_file = installed.var / "operator" / "admin-token"
    data_file.write_text("secret\n")
    log_file = installed.log / "operator.log"
    log_file.write_text("a log line\n")
    run(UNINSTALL, installed)
    assert list(installed.units.glob("zeitwork-*")) == []
    assert not installed.prefix.exists()
    assert not offered.exists()
    assert operator_env.read_text() == edited
    assert sorted(p.name for p in installed.etc.iterdir()) == sorted(f"{s}.env" for s in SERVICES)
    assert data_file.read_text() == "secret\n"
    assert log_file.read_text() == "a log line\n"
    if IS_ROOT:
        assert user_exists(installed.user)

    # 4. Uninstalling twice is fine.
    run(UNINSTALL, installed)

    # 5. --purge removes the rest, the user included.
    run(UNINSTALL, installed, "--purge")
    for path in (installed.etc, installed.var, installed.log, installed.prefix):
        assert not path.exists(), path
    if IS_ROOT:
        assert not user_exists(installed.user)


# --- refusals: checked before anything is touched ---------------------------------------------


@pytest.fixture
def empty_root() -> Iterator[Root]:
    root = new_root()
    try:
        yield root
    finally:
        remove_user(root.user)
        shutil.rmtree(root.base, ignore_errors=True)


def test_install_refuses_an_invalid_user_name(empty_root: Root) -> None:
    env_root = Root(base=empty_root.base, user="Bad User")
    proc = run(INSTALL, env_root, check=False)
    assert proc.returncode == 1
    assert "invalid user name" in proc.stderr
    assert list(empty_root.base.iterdir()) == []


def test_install_refuses_relative_paths(empty_root: Root) -> None:
    env = empty_root.env()
    env["ZEITWORK_ETC"] = "etc/zeitwork"
    proc = subprocess.run(
        ["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 1
    assert "must be absolute" in proc.stderr
    assert list(empty_root.base.iterdir()) == []


def test_install_refuses_a_prefix_it_did_not_make(empty_root: Root) -> None:
    empty_root.prefix.mkdir(parents=True)
    precious = empty_root.prefix / "precious.txt"
    precious.write_text("not ours\n")
    proc = run(INSTALL, empty_root, check=False)
    assert proc.returncode == 1
    assert "was not made by this installer" in proc.stderr
    assert not empty_root.etc.exists()
    assert not user_exists(empty_root.user)
    # ... and uninstall, even with --purge, leaves it alone too.
    run(UNINSTALL, empty_root, "--purge")
    assert precious.read_text() == "not ours\n"


def test_uninstall_refuses_to_purge_a_path_that_is_not_zeitwork(empty_root: Root) -> None:
    env = empty_root.env()
    keep = empty_root.base / "var" / "lib" / "important"
    keep.mkdir(parents=True)
    env["ZEITWORK_VAR"] = str(keep)
    proc = subprocess.run(
        ["bash", str(UNINSTALL), "--purge"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "refusing to purge" in proc.stderr
    assert keep.is_dir()


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the script as another user")
def test_install_as_non_root_into_the_system_paths_is_refused(tmp_path: Path) -> None:
    # A world-readable copy of the scripts, run as nobody with the default paths.
    base = Path(tempfile.mkdtemp(prefix="zeitwork-nonroot-"))
    try:
        base.chmod(0o755)
        for name in ("scripts", "deployments"):
            shutil.copytree(REPO / name, base / name)
        for path in base.rglob("*"):
            path.chmod(0o755 if path.is_dir() or path.suffix == ".sh" else 0o644)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZEITWORK_")}
        proc = subprocess.run(
            [
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "bash",
                str(base / "scripts" / "install.sh"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd="/",
        )
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "run as root" in proc.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
