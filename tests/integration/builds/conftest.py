"""Fixtures for builds from source: a real ``git daemon`` serving bare repositories on
127.0.0.1 (``tests/gitserver.py``), builder processes (``zeitwork builder``) against a live
operator, and the operator fixtures of the operator tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.gitserver import GitServer, git_daemon
from tests.integration.operator.conftest import operator, operator_factory  # noqa: F401


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    """``git daemon`` on a free 127.0.0.1 port serving ``tmp_path/repos``."""
    base = tmp_path / "repos"
    base.mkdir()
    with git_daemon(base) as server:
        yield server


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
