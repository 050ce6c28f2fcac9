"""A real operator process for agent tests (``zeitwork operator`` on a migrated database,
port chosen by the kernel and read from its start-up log line)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ADMIN = "zw_agent-tests-admin-" + uuid.uuid4().hex


@dataclass
class OperatorProcess:
    database_url: str
    root: Path
    host: str = "0.0.0.0"
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int | None = None
    _seen: int = 0

    @property
    def log_path(self) -> Path:
        return self.root / "operator.log"

    def start(self, *, same_port: bool = False) -> None:
        """Start (again); with ``same_port`` on the port it had before."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._seen = len(self._started_ports())
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "PORT": str(self.port) if same_port and self.port else "0",
            "HOST": self.host,
            "DATABASE_URL": self.database_url,
            "ZEITWORK_ADMIN_TOKEN": ADMIN,
            "ZEITWORK_DATA_DIR": str(self.root / "data"),
            "ZEITWORK_WORKERS": "1",
            "LOG_LEVEL": "info",
            **self.extra_env,
        }
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "zeitwork", "operator"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _started_ports(self) -> list[str]:
        if not self.log_path.exists():
            return []
        pattern = re.compile(r"operator\.started.*?port=(\d+)")
        return pattern.findall(self.log_path.read_text(errors="replace"))

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"operator exited:\n{self.log_path.read_text()}")
            found = self._started_ports()
            if len(found) > self._seen:
                self.port = int(found[-1])
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"operator not up after {timeout}s:\n{self.log_path.read_text()}")

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def client(self, host: str = "127.0.0.1") -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url(host), headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        )

    async def join_token(self) -> str:
        async with self.client() as client:
            response = await client.post("/api/v1/tokens", json={"scope": "join", "name": "t"})
            response.raise_for_status()
            return str(response.json()["token"])

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM ``process`` if it still runs and wait for it (20 s, then SIGKILL)."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def import_image(operator: OperatorProcess, path: Path, name: str = "app") -> str:
    """Import an OCI archive through the operator's API; returns the image id."""
    async with operator.client() as client:
        response = await client.post(
            "/api/v1/images/import",
            params={"name": name},
            content=path.read_bytes(),
            headers={"Content-Type": "application/x-tar"},
        )
        assert response.status_code in (200, 201), response.text
        assert response.json()["status"] == "ready", response.text
        return str(response.json()["id"])


async def wait_json(
    client: httpx.AsyncClient, path: str, predicate: Any, timeout: float = 30.0
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        response = await client.get(path)
        if response.status_code == 200:
            last = response.json()
            if predicate(last):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path}: condition not met in {timeout}s; last: {last}")
