"""Fixtures for builds from source: a real ``git daemon`` serving bare repositories on
127.0.0.1, builder processes (``zeitwork builder``) against a live operator, and the
operator fixtures of the operator tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.operator.conftest import operator, operator_factory  # noqa: F401

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


@dataclass
class GitServer:
    base: Path
    port: int

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def push(self, name: str, files: dict[str, str], *, branch: str = "main") -> str:
        """Commit ``files`` (the whole tree) to ``name``'s ``branch``; returns the commit."""
        bare = self.base / f"{name}.git"
        if not bare.exists():
            git("init", "-q", "--bare", "-b", branch, str(bare), cwd=self.base)
        work = self.base / f"{name}.work"
        if not work.exists():
            git("clone", "-q", str(bare), str(work), cwd=self.base)
            git("checkout", "-q", "-B", branch, cwd=work)
        for path in list(work.iterdir()):
            if path.name != ".git":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for rel, text in files.items():
            target = work / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        git("add", "-A", cwd=work)
        git("commit", "-q", "--allow-empty", "-m", "change", cwd=work)
        git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
        return git("rev-parse", "HEAD", cwd=work)


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    """``git daemon`` on a free 127.0.0.1 port serving ``tmp_path/repos``."""
    base = tmp_path / "repos"
    base.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            f"--base-path={base}",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(base),
        ],
        env={**os.environ, **GIT_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "git daemon did not start"
                time.sleep(0.05)
        yield GitServer(base=base, port=port)
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Builders:
    """``zeitwork builder`` processes (each its own process group, ended at teardown)."""

    work: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    """builder name -> its /health and /metrics port"""

    def start(self, url: str, token: str, name: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.work / f"{name}.log").open("wb")
        self.ports[name] = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "zeitwork", "builder"],
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "OPERATOR_URL": url,
                "ZEITWORK_BUILDER_TOKEN": token,
                "BUILDER_ID": name,
                "BUILDER_WORK_DIR": str(self.work / "builder"),
                "BUILDER_POLL_WAIT": "2",
                "BUILDER_LOG_FLUSH": "0.2",
                "PORT": str(self.ports[name]),
                "LOG_LEVEL": "info",
                **env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.started.append(proc)
        return proc

    def output(self, name: str) -> str:
        return (self.work / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                with_group(proc, signal.SIGTERM)
        for proc in self.started:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with_group(proc, signal.SIGKILL)
                proc.wait(10)


def with_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@pytest.fixture
def builders(tmp_path: Path) -> Iterator[Builders]:
    found = Builders(work=tmp_path)
    try:
        yield found
    finally:
        found.stop_all()
