"""``zeitwork operator`` as a real process (its own session), logging JSON lines to a file:
for the tests of its lifecycle and of its API over a real socket."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ADMIN = "zw_live-operator-admin-token-0123456789abcdef"


class OperatorProcess:
    """``zeitwork operator`` in its own process, logging JSON lines to a file."""

    def __init__(self, data_dir: Path, log: Path, *, database_url: str | None = None) -> None:
        env = {
            **os.environ,
            "ZEITWORK_DATA_DIR": str(data_dir),
            "PORT": "0",
            "HOST": "127.0.0.1",
            "ENVIRONMENT": "production",
            "ZEITWORK_ADMIN_TOKEN": ADMIN,
            "ZEITWORK_AUTO_MIGRATE": "1",
        }
        env.pop("DATABASE_URL", None)  # embedded, unless given
        if database_url is not None:
            env["DATABASE_URL"] = database_url
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zeitwork", "operator"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    def wait_started(self, within: float = 60.0) -> int:
        """The port, once ``operator.started`` is logged and /health answers."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            started = [e for e in self.events() if e.get("event") == "operator.started"]
            if started:
                port = int(started[0]["port"])
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).is_success:
                        return port
            time.sleep(0.1)  # polling the probe, not waiting for it
        raise AssertionError("the operator did not start:\n" + self.log.read_text())

    def wait_exit(self, within: float = 60.0) -> int:
        try:
            return self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(
                "the operator is still running:\n" + self.log.read_text()
            ) from None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
