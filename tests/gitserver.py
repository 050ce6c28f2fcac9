"""A real ``git daemon`` for tests and benchmarks: ``git_daemon(base)`` serves the bare
repositories under ``base`` on a free 127.0.0.1 port (``git://``, read-only, every
repository exported) until the ``with`` block ends; ``GitServer.push`` commits a whole tree
to one of them the way a developer's ``git push`` does."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


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


@contextlib.contextmanager
def git_daemon(base: Path, *, start_within: float = 10.0) -> Iterator[GitServer]:
    """``git daemon`` serving ``base`` (an existing directory) until the block ends; an
    ``AssertionError`` if it does not accept connections within ``start_within`` s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    daemon = subprocess.Popen(
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
        deadline = time.monotonic() + start_within
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("git daemon did not start") from None
                time.sleep(0.05)
        yield GitServer(base=base, port=port)
    finally:
        daemon.terminate()
        daemon.wait(10)
