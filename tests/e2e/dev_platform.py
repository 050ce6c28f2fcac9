"""``zeitwork dev`` as a real subprocess for end-to-end tests: free ports, its own bridge,
nft table, cgroup parent and run dir, and a clean-up that leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

PORT_NAMES = (
    "operator",
    "agent",
    "lb",
    "http",
    "https",
    "lb-admin",
    "edge-admin",
    "registry",
)


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Platform:
    process: asyncio.subprocess.Process
    data_dir: Path
    ports: dict[str, int]
    log: Path
    run_dir: Path
    bridge: str

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def until(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, platform: Platform
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if platform.process.returncode is not None:
            pytest.fail(
                f"zeitwork dev exited while waiting for {what}:\n{platform.output()[-4000:]}"
            )
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{platform.output()[-4000:]}")
        await asyncio.sleep(0.2)  # poll interval of a probe with a deadline


def zeitwork_processes(data_dir: Path) -> list[int]:
    """Processes (not zombies) whose environment names our data dir: the dev children."""
    marker = f"ZEITWORK_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "stat").read_text().split(") ", 1)[1].startswith("Z"):
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def _remove_host_state(bridge: str, table: str, cgroup_parent: str) -> None:
    subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
    subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True, check=False)
    cgroups = Path("/sys/fs/cgroup")
    for parent in [cgroups / cgroup_parent, *cgroups.glob(f"*/{cgroup_parent}")]:
        with contextlib.suppress(OSError):
            parent.rmdir()  # empty once the containers are gone


@contextlib.asynccontextmanager
async def dev_platform(
    tmp_path: Path, extra: tuple[str, ...] = (), env_extra: dict[str, str] | None = None
) -> AsyncIterator[Platform]:
    """``zeitwork dev`` as a subprocess with ``extra`` arguments and environment."""
    suffix = uuid.uuid4().hex[:6]
    bridge, table, cgroup_parent = f"zwp{suffix}", f"zwp{suffix}", f"zwp{suffix}"
    run_dir = Path("/run") / f"zwp{suffix}"
    data_dir = tmp_path / "data"
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    subnet = f"10.{random.randint(120, 250)}.{random.randint(0, 255)}.0/24"
    env = {
        **os.environ,
        "ZEITWORK_BRIDGE": bridge,
        "ZEITWORK_NFT_TABLE": table,
        "ZEITWORK_CGROUP_PARENT": cgroup_parent,
        "ZEITWORK_RUN_DIR": str(run_dir),
        "ZEITWORK_NODE_SUBNET": subnet,
        "ZEITWORK_STOP_GRACE": "2",  # busybox httpd as PID 1 ignores SIGTERM
        "LB_HEALTH_INTERVAL": "0.5",
        "ZEITWORK_HEARTBEAT_INTERVAL": "2",
        **(env_extra or {}),
    }
    env.pop("DATABASE_URL", None)
    env.pop("ZEITWORK_ADMIN_TOKEN", None)
    argv = [sys.executable, "-m", "zeitwork", "dev", "--data-dir", str(data_dir)]
    for name, port in ports.items():
        flag = {"http": "--http-port", "https": "--https-port"}.get(name, f"--{name}-port")
        argv += [flag, str(port)]
    argv += extra
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    made = Platform(
        process=process, data_dir=data_dir, ports=ports, log=log, run_dir=run_dir, bridge=bridge
    )
    try:
        yield made
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 60)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        for pid in zeitwork_processes(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        runc = shutil.which("runc") or "runc"
        listed = subprocess.run(
            [runc, "--root", str(run_dir / "runc"), "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        for container in listed.stdout.split():
            subprocess.run(
                [runc, "--root", str(run_dir / "runc"), "delete", "--force", container],
                capture_output=True,
                check=False,
            )
        _remove_host_state(bridge, table, cgroup_parent)
        shutil.rmtree(run_dir, ignore_errors=True)


async def cli(env: dict[str, str], *args: str, within: float = 60) -> str:
    """``zeitwork ARGS`` with ``env``: its output, once it exited 0 within ``within`` s
    (past that it is killed and the test fails with the output it had written)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zeitwork",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out: list[bytes] = []
    err: list[bytes] = []

    async def read(stream: asyncio.StreamReader | None, into: list[bytes]) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            into.append(chunk)

    try:
        await asyncio.wait_for(
            asyncio.gather(read(process.stdout, out), read(process.stderr, err), process.wait()),
            within,
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(
            f"zeitwork {' '.join(args)} took over {within:g} s; its output:\n"
            f"{b''.join(out).decode(errors='replace')[-6000:]}\n"
            f"{b''.join(err).decode(errors='replace')[-2000:]}"
        )
    assert process.returncode == 0, (args, b"".join(out), b"".join(err))
    return b"".join(out).decode()
